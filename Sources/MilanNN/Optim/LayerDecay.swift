// Layer-wise learning-rate decay for finetuning (BEiT / MAE util/lr_decay.py param_groups_lrd): with L = depth + 1,
// layer id 0 for cls_token, pos_embed and patch_embed.*, k + 1 for blocks.k.*, L for everything else (fc_norm,
// head); lr_scale = decay^(L − id); no weight decay for 1-D tensors and for pos_embed / cls_token.
import MilanAutograd

extension ParamGroup {
  public static func layerID(_ name: String, depth: Int) -> Int {
    if name == "cls_token" || name == "pos_embed" || name.hasPrefix("patch_embed.") { return 0 }
    if name.hasPrefix("blocks.") {
      let rest = name.dropFirst("blocks.".count)
      if let k = Int(rest.prefix(while: { $0.isNumber })) { return k + 1 }
    }
    return depth + 1
  }

  /// One group per (layer id, decay / no decay), as MAE builds them; only trainable parameters.
  public static func layerDecayGroups(_ named: [(String, Parameter)], depth: Int, weightDecay: Float,
                                      layerDecay: Float) -> [ParamGroup] {
    let numLayers = depth + 1
    var groups: [String: ParamGroup] = [:]
    var order: [String] = []
    for (name, p) in named where p.requiresGrad {
      let noDecay = p.shape.count == 1 || name == "pos_embed" || name == "cls_token"
      let id = layerID(name, depth: depth)
      let key = "layer_\(id)_\(noDecay ? "no_decay" : "decay")"
      if groups[key] == nil {
        var scale: Float = 1
        for _ in 0..<(numLayers - id) { scale *= layerDecay }
        groups[key] = ParamGroup(parameters: [], weightDecay: noDecay ? 0 : weightDecay, lrScale: scale)
        order.append(key)
      }
      groups[key]!.parameters.append((name, p))
    }
    return order.map { groups[$0]! }
  }
}
