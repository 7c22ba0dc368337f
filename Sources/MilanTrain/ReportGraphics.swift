// The report's pictures, drawn by the project: line and scatter plots and matrices as SVG (text stays text, so axes
// and labels are legible at any size), and image panels (an image, a heat map over it, a mask) as PNG through
// libpng, inlined as data URIs so the page is one self-contained file.
import Foundation
import MilanData

enum SVG {
  static func esc(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
      .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
  }

  static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                        "#bcbd22", "#17becf"]

  /// Tick values: about `count` round numbers covering lo…hi.
  static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
    guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
    let raw = (hi - lo) / Double(count)
    let mag = pow(10, floor(log10(raw)))
    let step = [1.0, 2, 2.5, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? raw
    var t = (lo / step).rounded(.up) * step, out: [Double] = []
    while t <= hi + step * 1e-9 { out.append(t); t += step }
    return out
  }

  static func label(_ v: Double) -> String {
    if v == 0 { return "0" }
    if abs(v) >= 1e4 || abs(v) < 1e-2 { return String(format: "%.1e", v) }
    return String(format: abs(v) >= 100 ? "%.0f" : (abs(v) >= 1 ? "%.2g" : "%.3g"), v)
  }

  /// A line plot of named series of (x, y) points with axes, ticks, labels and a legend.
  static func lines(_ series: [(String, [(Double, Double)])], title: String, x: String, y: String,
                    width: Int = 460, height: Int = 280) -> String {
    let pts = series.flatMap(\.1).filter { $0.0.isFinite && $0.1.isFinite }
    guard !pts.isEmpty else { return "<p>(no data for \(esc(title)))</p>" }
    let (x0, x1) = (pts.map(\.0).min()!, pts.map(\.0).max()!), (y0raw, y1raw) = (pts.map(\.1).min()!, pts.map(\.1).max()!)
    let pad = (y1raw - y0raw) * 0.05
    let y0 = y0raw - pad, y1 = y1raw + (pad > 0 ? pad : 1)
    let l = 62.0, r = 12.0, t = 28.0, b = 42.0
    let w = Double(width) - l - r, h = Double(height) - t - b
    func px(_ v: Double) -> Double { l + (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5) * w }
    func py(_ v: Double) -> Double { t + h - (v - y0) / (y1 - y0) * h }
    var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" class=\"plot\" "
      + "font-family=\"sans-serif\" font-size=\"11\">"
    s += "<text x=\"\(Int(l))\" y=\"16\" font-size=\"13\" font-weight=\"bold\">\(esc(title))</text>"
    s += "<rect x=\"\(l)\" y=\"\(t)\" width=\"\(w)\" height=\"\(h)\" fill=\"none\" stroke=\"#888\"/>"
    for v in ticks(y0, y1) {
      s += "<line x1=\"\(l - 4)\" x2=\"\(l + w)\" y1=\"\(py(v))\" y2=\"\(py(v))\" stroke=\"#eee\"/>"
      s += "<text x=\"\(l - 6)\" y=\"\(py(v) + 4)\" text-anchor=\"end\">\(label(v))</text>"
    }
    for v in ticks(x0, x1) {
      s += "<line x1=\"\(px(v))\" x2=\"\(px(v))\" y1=\"\(t + h)\" y2=\"\(t + h + 4)\" stroke=\"#888\"/>"
      s += "<text x=\"\(px(v))\" y=\"\(t + h + 16)\" text-anchor=\"middle\">\(label(v))</text>"
    }
    s += "<text x=\"\(l + w / 2)\" y=\"\(Double(height) - 6)\" text-anchor=\"middle\">\(esc(x))</text>"
    s += "<text transform=\"translate(14,\(t + h / 2)) rotate(-90)\" text-anchor=\"middle\">\(esc(y))</text>"
    for (k, (name, points)) in series.enumerated() {
      let c = palette[k % palette.count]
      let path = points.filter { $0.0.isFinite && $0.1.isFinite }
        .map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }.joined(separator: " ")
      s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"1.4\" points=\"\(path)\"/>"
      if series.count > 1 {
        let ly = t + 12 + Double(k) * 14
        s += "<rect x=\"\(l + w - 150)\" y=\"\(ly - 8)\" width=\"10\" height=\"10\" fill=\"\(c)\"/>"
        s += "<text x=\"\(l + w - 136)\" y=\"\(ly + 1)\">\(esc(name))</text>"
      }
    }
    return s + "</svg>"
  }

  /// A scatter plot of 2-D points coloured by class, with a legend of the class names.
  static func scatter(_ points: [[Double]], labels: [Int], classNames: [String], title: String,
                      size: Int = 300) -> String {
    guard !points.isEmpty else { return "" }
    let xs = points.map { $0[0] }, ys = points.map { $0[1] }
    let (x0, x1, y0, y1) = (xs.min()!, xs.max()!, ys.min()!, ys.max()!)
    let m = 16.0, side = Double(size) - 2 * m, top = 24.0
    func px(_ v: Double) -> Double { m + (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5) * side }
    func py(_ v: Double) -> Double { top + (y1 > y0 ? (y1 - v) / (y1 - y0) : 0.5) * (side - top + m) }
    var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(size)\" height=\"\(size)\" class=\"plot\" "
      + "font-family=\"sans-serif\" font-size=\"11\">"
    s += "<text x=\"\(Int(m))\" y=\"15\" font-size=\"13\" font-weight=\"bold\">\(esc(title))</text>"
    s += "<rect x=\"1\" y=\"1\" width=\"\(size - 2)\" height=\"\(size - 2)\" fill=\"none\" stroke=\"#ccc\"/>"
    for (p, c) in zip(points, labels) {
      s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.2\" fill=\"%@\" fill-opacity=\"0.8\"/>", px(p[0]), py(p[1]),
                  palette[c % palette.count])
    }
    return s + "</svg>"
  }

  static func legend(_ classNames: [String]) -> String {
    classNames.enumerated().map { k, n in
      "<span class=\"key\"><span class=\"swatch\" style=\"background:\(palette[k % palette.count])\"></span>\(esc(n))</span>"
    }.joined(separator: " ")
  }

  /// A confusion matrix (rows: true class, columns: predicted) with counts, shaded by row share.
  static func confusion(_ m: [[Int]], classNames: [String], title: String) -> String {
    let k = m.count, cell = 34.0, left = 92.0, top = 96.0
    // Wide enough for the grid and for the title (13 px bold sans-serif: under 8 px per character).
    let width = max(Int(left + Double(k) * cell + 10), 8 * title.count + 8), height = Int(top + Double(k) * cell + 10)
    var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" class=\"plot\" "
      + "font-family=\"sans-serif\" font-size=\"10\">"
    s += "<text x=\"4\" y=\"14\" font-size=\"13\" font-weight=\"bold\">\(esc(title))</text>"
    s += "<text x=\"\(left)\" y=\"30\">predicted →</text><text x=\"4\" y=\"\(top - 6)\">true ↓</text>"
    for j in 0..<k {
      s += "<text transform=\"translate(\(left + Double(j) * cell + cell / 2 + 3),\(top - 4)) rotate(-60)\">"
        + "\(esc(String(classNames[j].prefix(12))))</text>"
    }
    for i in 0..<k {
      let total = max(1, m[i].reduce(0, +))
      s += "<text x=\"\(left - 4)\" y=\"\(top + Double(i) * cell + cell / 2 + 4)\" text-anchor=\"end\">"
        + "\(esc(String(classNames[i].prefix(14))))</text>"
      for j in 0..<k {
        let share = Double(m[i][j]) / Double(total)
        let shade = Int(255 - 200 * share)
        s += "<rect x=\"\(left + Double(j) * cell)\" y=\"\(top + Double(i) * cell)\" width=\"\(cell)\" height=\"\(cell)\" "
          + "fill=\"rgb(\(shade),\(shade),255)\" stroke=\"#fff\"/>"
        s += "<text x=\"\(left + Double(j) * cell + cell / 2)\" y=\"\(top + Double(i) * cell + cell / 2 + 4)\" "
          + "text-anchor=\"middle\" fill=\"\(share > 0.5 ? "#fff" : "#000")\">\(m[i][j])</text>"
      }
    }
    return s + "</svg>"
  }
}

/// Image panels: an RGB image scaled up by whole pixels, a patch-grid heat map over it, a mask.
struct Panel {
  var width: Int, height: Int
  var rgb: [UInt8]

  /// Nearest-neighbour upscaling of an RGB image to `scale` × its size.
  static func image(_ rgb: [UInt8], width: Int, height: Int, scale: Int) -> Panel {
    var out = [UInt8](repeating: 0, count: width * scale * height * scale * 3)
    for y in 0..<(height * scale) {
      for x in 0..<(width * scale) {
        let s = ((y / scale) * width + x / scale) * 3, d = (y * width * scale + x) * 3
        out[d] = rgb[s]; out[d + 1] = rgb[s + 1]; out[d + 2] = rgb[s + 2]
      }
    }
    return Panel(width: width * scale, height: height * scale, rgb: out)
  }

  /// Viridis at t in [0, 1] (five control points, linear between them).
  static func viridis(_ t: Double) -> (Double, Double, Double) {
    let c: [(Double, Double, Double)] = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    let u = min(max(t, 0), 1) * 4, i = min(Int(u), 3), f = u - Double(i)
    return (c[i].0 + (c[i + 1].0 - c[i].0) * f, c[i].1 + (c[i + 1].1 - c[i].1) * f, c[i].2 + (c[i + 1].2 - c[i].2) * f)
  }

  /// `values` on a g × g patch grid (NaN: no value, left grey), normalised to its own min…max, blended over the
  /// image (alpha of the colour 0.65).
  func heat(_ values: [Float], grid g: Int) -> Panel {
    let finite = values.filter { $0.isFinite }
    let lo = Double(finite.min() ?? 0), hi = Double(finite.max() ?? 1)
    var out = rgb
    for y in 0..<height {
      for x in 0..<width {
        let v = values[(y * g / height) * g + x * g / width], d = (y * width + x) * 3
        let grey = 0.299 * Double(rgb[d]) + 0.587 * Double(rgb[d + 1]) + 0.114 * Double(rgb[d + 2])
        guard v.isFinite else { for k in 0..<3 { out[d + k] = UInt8(grey * 0.35 + 90) }; continue }
        let (r, gg, b) = Panel.viridis(hi > lo ? (Double(v) - lo) / (hi - lo) : 0.5)
        out[d] = UInt8(0.65 * r + 0.35 * grey)
        out[d + 1] = UInt8(0.65 * gg + 0.35 * grey)
        out[d + 2] = UInt8(0.65 * b + 0.35 * grey)
      }
    }
    return Panel(width: width, height: height, rgb: out)
  }

  /// The image with the patches where `masked` is true dimmed to a flat grey, grid lines between patches.
  func masked(_ masked: [Bool], grid g: Int) -> Panel {
    var out = rgb
    for y in 0..<height {
      for x in 0..<width {
        let d = (y * width + x) * 3
        if masked[(y * g / height) * g + x * g / width] { for k in 0..<3 { out[d + k] = UInt8(Int(rgb[d + k]) / 5 + 110) } }
        if x % (width / g) == 0 || y % (height / g) == 0 { for k in 0..<3 { out[d + k] = 200 } }
      }
    }
    return Panel(width: width, height: height, rgb: out)
  }

  func dataURI() throws -> String {
    let png = try DecodedImage(width: width, height: height, channels: 3, pixels: rgb).pngData()
    return "data:image/png;base64," + png.base64EncodedString()
  }
}
