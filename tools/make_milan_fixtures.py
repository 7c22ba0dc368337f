#!/usr/bin/env python3
"""Writes the MILAN training-step fixtures described in tools/FIXTURES.md ("MILAN step fixtures").

Run with the pinned reference environment (tools/setup_reference_env.sh; same extras as make_model_fixtures.py,
whose helpers it imports):

    /work/venv-ref/bin/python tools/make_milan_fixtures.py [--out DIR] [--list]

Output: Tests/Fixtures/milan/step_{milan,random_mask,mae_pixel,mae_feature,kd}{,_grad,_adamw}.safetensors, and
step_{milan_patches,milan_masked,kd_patches,mae_pixel_patches}.safetensors (loss + gradients of the other loss-token
options on the variant's weights and batch). Each variant is split
over three files (one step's forward / its gradients / the AdamW update plus a 10-step run) so that every file stays
well under 1 MiB; the union of a variant's three files is one flat key set (no key appears twice).

Model: tools/milan_reference.py (MILAN's MaskedAutoencoderViT, the CLIP teacher, timm 0.3.2 add_weight_decay +
torch.optim.AdamW). `kd` = the knowledge-distillation ablation (MaskedAutoencoderViT(kd=True): no decoder, kd_pred
head on the encoder output, teacher features of the visible tokens); its _adamw file also holds a second 10-step run
with torch.nn.utils.clip_grad_norm_ before every step. Teacher weights:
Tests/Fixtures/models/clip_openclip.safetensors (`visual.*`).
Deterministic: fixed seeds, float32 on CPU, one thread, canonical safetensors header; re-running gives identical
bytes (the script prints each file's sha256).
"""
import argparse
import json
import os
import sys
from functools import partial

import torch
import torch.nn as nn

from make_model_fixtures import CLIP, assert_close, clip_reference, gen, randn  # noqa: E402
from reference_compat import write_fixture  # noqa: E402
import milan_reference as mr  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "Fixtures", "milan")
BASE_METADATA = {"format": "pt", "generator": "tools/make_milan_fixtures.py", "torch": torch.__version__}

STUDENT = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4.0,
               decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)
MASK_RATIO = 0.75
OPTIM = dict(name="torch.optim.AdamW", lr=1e-3, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.05, amsgrad=False,
             maximize=False, implementation="single-tensor (foreach=False)", lr_schedule="constant")
BATCH, BATCH_10, STEPS = 4, 2, 10
CLIP_MAX_NORM = 1.75  # kd: max_norm of the clipped 10-step run (pre-clip norms 1.6-3.7: clips 7 of 10 steps)
MODEL_SEED = 0        # torch.manual_seed before construction (MAE init draws from the global RNG)
PERTURB_SEED = 10     # generator for the N(0, 0.01^2) perturbation of every trainable tensor
PERTURB_STD = 0.01
DATA_SEED = 100       # images, images_10
MASK_SEED = 101       # exp_noise / uniform_noise, then one [2,16] draw per step of the 10-step run

VARIANTS = {
    "milan": dict(use_clip=True, attn_mask=True, change_decoder=True, norm_pix_loss=False,
                  pred_dim=CLIP["output_dim"], noise="exp"),
    "random_mask": dict(use_clip=True, attn_mask=False, change_decoder=True, norm_pix_loss=False,
                        pred_dim=CLIP["output_dim"], noise="uniform"),
    "mae_pixel": dict(use_clip=False, attn_mask=False, change_decoder=False, norm_pix_loss=True,
                      pred_dim=STUDENT["patch_size"] ** 2 * STUDENT["in_chans"], noise="uniform"),
    # paper Table 5's "MAE decoder" rows with the teacher's features: MAE's self-attention decoder over all 1 + L
    # tokens, predicting every token (class token included), semantic-aware masking as milan (same batch and noise)
    "mae_feature": dict(use_clip=True, attn_mask=True, change_decoder=False, norm_pix_loss=False,
                        pred_dim=CLIP["output_dim"], noise="exp"),
    # knowledge-distillation ablation (paper Table 10): MILAN's encoder + semantic-aware masking, no decoder
    "kd": dict(use_clip=True, attn_mask=True, change_decoder=True, norm_pix_loss=False, pred_dim=CLIP["output_dim"],
               noise="exp", kd=True, encoder_from="milan"),
}


def build_student(v):
    torch.manual_seed(MODEL_SEED)
    model = mr.MaskedAutoencoderViT(**STUDENT, use_clip=v["use_clip"], attn_mask=v["attn_mask"],
                                    change_decoder=v["change_decoder"], norm_pix_loss=v["norm_pix_loss"],
                                    pred_dim=v["pred_dim"], **({"kd": True} if v.get("kd") else {}))
    g = gen(PERTURB_SEED)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(PERTURB_STD * randn(g, *p.shape))
    if v.get("encoder_from"):
        # kd: every tensor but kd_pred.* is copied from the (perturbed) student of another variant, so the encoder
        # weights equal that variant's; kd_pred.* keep their own init + perturbation from above
        src = build_student(VARIANTS[v["encoder_from"]]).state_dict()
        own = [k for k in model.state_dict() if not k.startswith("kd_pred.")]
        res = model.load_state_dict({k: src[k] for k in own}, strict=False)
        assert not res.unexpected_keys and sorted(res.missing_keys) == ["kd_pred.bias", "kd_pred.weight"], res
    return model


def draw_noise(kind, g, *shape):
    """exp: the Exp(1) draws torch.multinomial would make (empty_like(p).exponential_(1)); uniform: torch.rand."""
    if kind == "exp":
        return torch.empty(*shape, dtype=torch.float32).exponential_(1.0, generator=g)
    return torch.rand(*shape, generator=g, dtype=torch.float32)


def load_teacher():
    teacher = mr.CLIPVisualTeacher.from_safetensors(mr.CLIP_FIXTURE, **{k: CLIP[k] for k in (
        "image_size", "patch_size", "width", "layers", "heads", "mlp_ratio", "output_dim")})
    from safetensors.torch import load_file
    f = load_file(mr.CLIP_FIXTURE)
    with torch.no_grad():
        tok, attn = teacher(f["input"])
        assert_close("teacher tokens vs clip_openclip", tok, f["tokens"], 1e-5)
        assert_close("teacher attn_cls vs clip_openclip", mr.CLIPVisualTeacher.importance(attn), f["attn_cls"], 1e-6)
        sd = {k: v for k, v in f.items() if k.startswith("visual.")}
        tok2, probs2 = clip_reference(sd, f["input"], sd["visual.positional_embedding"])
        assert_close("teacher vs make_model_fixtures.clip_reference", tok, tok2, 2e-6)
        assert_close("teacher attention vs clip_reference", attn, probs2.mean(1), 1e-6)
    return teacher


def crosscheck_timm(model):
    """The hand-written encoder blocks / patch embed against timm's modules with the same weights."""
    from timm.layers import PatchEmbed as TimmPatchEmbed
    from timm.models.vision_transformer import Block as TimmBlock
    g = gen(5)
    x = randn(g, 3, 17, STUDENT["embed_dim"])
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            tb = TimmBlock(STUDENT["embed_dim"], STUDENT["num_heads"], STUDENT["mlp_ratio"], qkv_bias=True,
                           norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
            tb.load_state_dict(blk.state_dict(), strict=True)
            assert_close(f"block {i} vs timm Block", blk(x), tb(x), 2e-6)
        if not model.kd and not model.change_decoder:
            xd = randn(g, 3, 17, STUDENT["decoder_embed_dim"])
            for i, blk in enumerate(model.decoder_blocks):
                tb = TimmBlock(STUDENT["decoder_embed_dim"], STUDENT["decoder_num_heads"], STUDENT["mlp_ratio"],
                               qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
                tb.load_state_dict(blk.state_dict(), strict=True)
                assert_close(f"decoder block {i} vs timm Block", blk(xd), tb(xd), 2e-6)
        tp = TimmPatchEmbed(STUDENT["img_size"], STUDENT["patch_size"], STUDENT["in_chans"], STUDENT["embed_dim"])
        tp.load_state_dict(model.patch_embed.state_dict(), strict=True)
        img = randn(g, 2, 3, 32, 32)
        assert_close("patch_embed vs timm PatchEmbed", model.patch_embed(img), tp(img), 1e-6)


def forward_step(model, teacher, v, images, noise, mask_gen_state=None):
    """One forward (teacher under no_grad, student with autograd). Checks the semantic-aware shuffle against
    torch.multinomial when the mask generator's state before the draw is given."""
    target = importance = None
    if v["use_clip"]:
        with torch.no_grad():
            target, attn = teacher(images)
            importance = mr.CLIPVisualTeacher.importance(attn).contiguous()
    out = model(images, MASK_RATIO, noise=noise, target=target,
                importance=importance if v["attn_mask"] else None)
    if v["attn_mask"] and mask_gen_state is not None:
        g = torch.Generator()
        g.set_state(mask_gen_state)
        mult = torch.multinomial(importance, importance.shape[1], replacement=False, generator=g)
        assert torch.equal(mult, out["ids_shuffle"]), "multinomial permutation differs from argsort_desc(p/E)"
    if not v["use_clip"]:
        target = model.pixel_target(images)
    if v.get("kd"):
        out["teacher_tokens"] = target
        target = out["kd_target"]   # teacher tokens at [cls, 1 + ids_keep]: [N, 1+K, C]
    out["target"], out["importance"] = target, importance
    return out


def variant(name, teacher):
    v = VARIANTS[name]
    model = build_student(v)
    crosscheck_timm(model)
    init_sd = {k: t.detach().clone() for k, t in model.state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    nd, d = mr.weight_decay_names(model)
    assert "cls_token" in d and not {"pos_embed", "decoder_pos_embed"} & set(nd + d)
    if v.get("kd"):
        assert "kd_pred.weight" in d and "kd_pred.bias" in nd
        assert not any(k.startswith(("decoder_", "mask_token")) for k in model.state_dict())
    else:
        assert "mask_token" in d

    gd, gm = gen(DATA_SEED), gen(MASK_SEED)
    images = randn(gd, BATCH, 3, 32, 32)
    images_10 = randn(gd, STEPS, BATCH_10, 3, 32, 32)
    state = gm.get_state()
    noise = draw_noise(v["noise"], gm, BATCH, 16)
    states_10, noise_10 = [], []
    for _ in range(STEPS):
        states_10.append(gm.get_state())
        noise_10.append(draw_noise(v["noise"], gm, BATCH_10, 16))
    noise_10 = torch.stack(noise_10)

    # one step
    opt = mr.make_optimizer(model, lr=OPTIM["lr"], weight_decay=OPTIM["weight_decay"], betas=tuple(OPTIM["betas"]),
                            eps=OPTIM["eps"])
    opt.zero_grad(set_to_none=True)
    out = forward_step(model, teacher, v, images, noise, state)
    out["loss"].backward()
    named = dict(model.named_parameters())
    grads = {n: named[n].grad.detach().clone() for n in trainable}
    assert all(torch.isfinite(g_).all() and g_.abs().sum() > 0 for g_ in grads.values())
    # explicit AdamW formula for step 1 (m = v = 0 before)
    expect = {n: mr.adamw_step_reference(named[n].detach(), grads[n], torch.zeros_like(grads[n]),
                                         torch.zeros_like(grads[n]), 1, OPTIM["lr"],
                                         0.0 if n in nd else OPTIM["weight_decay"], tuple(OPTIM["betas"]),
                                         OPTIM["eps"])[0] for n in trainable}
    opt.step()
    updated = {n: named[n].detach().clone() for n in trainable}
    for n in trainable:
        assert_close(f"AdamW {n}", updated[n], expect[n], 1e-7)
    loss_masked = None
    if v["use_clip"] and not v.get("kd"):
        loss_masked = mr.milan_feature_loss(out["pred"].detach(), out["target"], out["mask"])

    # 10 steps from the same initial weights, fresh optimizer, constant lr
    model10 = build_student(v)
    model10.load_state_dict(init_sd)
    opt10 = mr.make_optimizer(model10, lr=OPTIM["lr"], weight_decay=OPTIM["weight_decay"],
                              betas=tuple(OPTIM["betas"]), eps=OPTIM["eps"])
    losses, norms = [], []
    for s in range(STEPS):
        opt10.zero_grad(set_to_none=True)
        o = forward_step(model10, teacher, v, images_10[s], noise_10[s], states_10[s])
        o["loss"].backward()
        if v.get("kd"):   # read-only: the unclipped run's total gradient norm, printed for choosing CLIP_MAX_NORM
            norms.append(mr.clip_grad_norm_reference([p.grad for p in model10.parameters() if p.requires_grad],
                                                     float("inf"))[1])
        opt10.step()
        losses.append(o["loss"].detach())
    losses_10 = torch.stack(losses)
    clip_file = {}
    if v.get("kd"):
        print(f"  {name}: unclipped 10-step run, total grad norms "
              f"{[round(x, 5) for x in torch.stack(norms).tolist()]}", file=sys.stderr)
        clip_file = clipped_run(v, init_sd, teacher, images_10, noise_10, states_10, losses_10,
                                {n: p.detach().clone() for n, p in model10.named_parameters() if p.requires_grad})

    noise_key = "exp_noise" if v["noise"] == "exp" else "uniform_noise"
    main = {f"model.{k}": t for k, t in init_sd.items()}
    main.update({"images": images, noise_key: noise, "target": out["target"], "ids_shuffle": out["ids_shuffle"],
                 "ids_restore": out["ids_restore"], "ids_keep": out["ids_keep"], "ids_dump": out["ids_dump"],
                 "mask": out["mask"], "latent": out["latent"], "pred": out["pred"], "loss": out["loss"]})
    if v["use_clip"]:
        main["importance"] = out["importance"]
    if loss_masked is not None:
        main["loss_masked"] = loss_masked
    grad_file = {f"grad.{n}": grads[n] for n in trainable}
    adamw_file = {f"updated.{n}": updated[n] for n in trainable}
    adamw_file.update({"images_10": images_10, f"{noise_key}_10": noise_10, "losses_10": losses_10})
    adamw_file.update(clip_file)
    if v.get("kd"):
        return kd_files(name, v, main, grad_file, adamw_file, nd, d)

    config = {
        "student": {**STUDENT, "mask_ratio": MASK_RATIO, "len_keep": int(16 * (1 - MASK_RATIO)), "ln_eps": 1e-6,
                    "act": "GELU (erf)", "qkv_bias": True, **{k: v[k] for k in ("use_clip", "attn_mask",
                                                                               "change_decoder", "norm_pix_loss")},
                    "decoder": "prompting (Block_fordecoder: attn.q, attn.kv)" if v["change_decoder"]
                    else "MAE (Block: attn.qkv)", "decoder_pred_out": v["pred_dim"]},
        "teacher": ({**CLIP, "act_layer": "QuickGELU", "ln_eps": 1e-5,
                     "weights": "Tests/Fixtures/models/clip_openclip.safetensors visual.*"} if v["use_clip"] else None),
        "masking": ("attention_masking: ids_shuffle = argsort_desc(importance / exp_noise) (= torch.multinomial("
                    "importance, 16, replacement=False) with those Exp(1) draws; checked)" if v["attn_mask"] else
                    "random_masking: ids_shuffle = argsort(uniform_noise) ascending"),
        "loss": ("mean over all B x 17 tokens (class token included) of 2 - 2 cos(pred, target), no eps; "
                 "loss_masked = mean over masked patch tokens only" if v["use_clip"] else
                 "MAE norm_pix_loss: target = patchify(images) (per patch (row, col, channel)), "
                 "(t - mean) / sqrt(var_unbiased + 1e-6) per patch; mean over 192 of (pred - target)^2, then "
                 "(loss * mask).sum() / mask.sum()"),
        "optimizer": {**OPTIM, "param_groups": "timm 0.3.2 add_weight_decay: wd 0 for 1-D params and names ending "
                      "'.bias'; wd 0.05 for everything else incl. cls_token and mask_token; pos tables frozen "
                      "(not in the optimizer)", "no_decay": nd, "decay": d},
        "init": f"torch.manual_seed({MODEL_SEED}); MAE initialize_weights (sin-cos pos tables, xavier_uniform on "
                f"Linear and on the patch conv weight viewed [D, C*p*p], patch conv bias = PyTorch default, "
                f"normal(0.02) cls/mask token, LayerNorm 1/0, Linear bias 0); then N(0, {PERTURB_STD}^2) noise "
                f"(generator seed {PERTURB_SEED}) added to every trainable tensor in named_parameters order",
        "seeds": {"model": MODEL_SEED, "perturb": PERTURB_SEED, "data": DATA_SEED, "mask_noise": MASK_SEED},
        "run": "one step: zero_grad, teacher (no_grad) -> forward -> loss.backward -> grad.* -> AdamW step -> "
               "updated.*; 10-step run: same initial weights, new optimizer, step s uses images_10[s] and the "
               "noise_10[s]; losses_10[s] = loss before update s",
    }
    meta = {"config": json.dumps(config, sort_keys=True),
            "files": f"step_{name}.safetensors (weights, batch, forward), step_{name}_grad.safetensors (grad.*), "
                     f"step_{name}_adamw.safetensors (updated.*, 10-step run)"}
    return {f"step_{name}": main, f"step_{name}_grad": grad_file, f"step_{name}_adamw": adamw_file}, meta


def clipped_run(v, init_sd, teacher, images_10, noise_10, states_10, losses_10, final_unclipped):
    """The 10-step run again (same initial weights, batches, mask noise, fresh optimizer) with
    torch.nn.utils.clip_grad_norm_(trainable params, CLIP_MAX_NORM, norm_type=2, foreach=False) between backward and
    the AdamW step; checked bit-for-bit against milan_reference.clip_grad_norm_reference every step."""
    model = build_student(v)
    model.load_state_dict(init_sd)
    opt = mr.make_optimizer(model, lr=OPTIM["lr"], weight_decay=OPTIM["weight_decay"], betas=tuple(OPTIM["betas"]),
                            eps=OPTIM["eps"])
    params = [p for p in model.parameters() if p.requires_grad]
    losses, norms = [], []
    for s in range(STEPS):
        opt.zero_grad(set_to_none=True)
        o = forward_step(model, teacher, v, images_10[s], noise_10[s], states_10[s])
        o["loss"].backward()
        pre = [p.grad.detach().clone() for p in params]
        total = torch.nn.utils.clip_grad_norm_(params, max_norm=CLIP_MAX_NORM, norm_type=2.0, foreach=False)
        ref, total_ref = mr.clip_grad_norm_reference(pre, CLIP_MAX_NORM)
        assert torch.equal(total, total_ref), (s, total, total_ref)
        assert all(torch.equal(p.grad, r) for p, r in zip(params, ref)), s
        opt.step()
        losses.append(o["loss"].detach())
        norms.append(total.detach())
    losses, norms = torch.stack(losses), torch.stack(norms)
    clipped = int((norms > CLIP_MAX_NORM).sum())
    print(f"  clipped run (max_norm {CLIP_MAX_NORM}): pre-clip total norms {[round(x, 5) for x in norms.tolist()]}, "
          f"clipped on {clipped}/{STEPS} steps; losses_10_clip {[round(x, 4) for x in losses.tolist()]}",
          file=sys.stderr)
    assert STEPS // 2 < clipped < STEPS, clipped   # clips most steps; at least one step takes the coef = 1 branch
    assert torch.equal(losses[0], losses_10[0])   # same weights and batch before the first update
    assert (losses[1:] - losses_10[1:]).abs().min() > 0 and (losses - losses_10).abs().max() > 1e-3
    final = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert max((final[n] - final_unclipped[n]).abs().max().item() for n in final) > 1e-4
    return {"losses_10_clip": losses, "grad_norms_10_clip": norms,
            "clip_max_norm": torch.tensor(CLIP_MAX_NORM, dtype=torch.float32)}


def kd_files(name, v, main, grad_file, adamw_file, nd, d):
    C, D, K = v["pred_dim"], STUDENT["embed_dim"], int(16 * (1 - MASK_RATIO))
    student = {k: STUDENT[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                                       "mlp_ratio")}
    config = {
        "student": {**student, "mask_ratio": MASK_RATIO, "len_keep": K, "ln_eps": 1e-6, "act": "GELU (erf)",
                    "qkv_bias": True, "use_clip": True, "attn_mask": True, "kd": True,
                    "decoder": "none (no mask_token, decoder_embed, decoder_pos_embed, decoder_blocks, decoder_norm, "
                               "decoder_pred)",
                    "kd_pred": f"Linear({D}, {C}) with bias: kd_pred.weight [{C},{D}], kd_pred.bias [{C}]"},
        "teacher": {**CLIP, "act_layer": "QuickGELU", "ln_eps": 1e-5,
                    "weights": "Tests/Fixtures/models/clip_openclip.safetensors visual.*"},
        "masking": "attention_masking: ids_shuffle = argsort_desc(importance / exp_noise) (= torch.multinomial("
                   "importance, 16, replacement=False) with those Exp(1) draws; checked), as the milan variant",
        "pred": f"kd_pred(latent) [B, 1+{K}, {C}]; latent = encoder output after norm [B, 1+{K}, {D}] (class token "
                "first, visible tokens in ids_keep order)",
        "target": f"teacher tokens (ln_post(x) @ proj) at the same positions: cat(teacher[:, :1], "
                  f"teacher[:, 1 + ids_keep]) [B, 1+{K}, {C}]",
        "loss": f"mean over all B x {1 + K} tokens of 2 - 2 cos(pred, target), no eps (milan_feature_loss)",
        "optimizer": {**OPTIM, "param_groups": "timm 0.3.2 add_weight_decay: wd 0 for 1-D params and names ending "
                      "'.bias'; wd 0.05 for everything else incl. cls_token and kd_pred.weight; pos_embed frozen "
                      "(not in the optimizer)", "no_decay": nd, "decay": d},
        "grad_clip": {"fn": "torch.nn.utils.clip_grad_norm_(trainable params, max_norm, norm_type=2, foreach=False)",
                      "max_norm": CLIP_MAX_NORM,
                      "formula": "total = vector_norm(stack([vector_norm(g) for g in grads])) (float32); coef = "
                                 "clamp(max_norm / (total + 1e-6), max=1) (torch evaluates max_norm / t as "
                                 "t.reciprocal() * max_norm); every grad *= coef (also when coef == 1)",
                      "used_by": "losses_10_clip, grad_norms_10_clip (pre-clip totals) only; losses_10 is unclipped"},
        "init": f"kd model: torch.manual_seed({MODEL_SEED}); MaskedAutoencoderViT(kd=True) MAE initialize_weights "
                f"(kd_pred: xavier_uniform weight, zero bias); then N(0, {PERTURB_STD}^2) noise (generator seed "
                f"{PERTURB_SEED}) added to every trainable tensor in the kd model's named_parameters order; then "
                f"every tensor except kd_pred.* is replaced by the milan variant's (perturbed) weights, so the "
                f"encoder weights equal step_milan's model.* encoder keys",
        "seeds": {"model": MODEL_SEED, "perturb": PERTURB_SEED, "data": DATA_SEED, "mask_noise": MASK_SEED},
        "shared_with_step_milan": "images, exp_noise, importance, ids_*, mask, latent, images_10, exp_noise_10 and "
                                  "the encoder weights are identical to step_milan's (checked); target = step_milan "
                                  "target gathered at [0, 1 + ids_keep]",
        "run": "one step: zero_grad, teacher (no_grad) -> forward -> loss.backward -> grad.* -> AdamW step -> "
               "updated.*; 10-step run: same initial weights, new optimizer, step s uses images_10[s] and "
               "exp_noise_10[s]; losses_10[s] = loss before update s; clipped 10-step run: the same with "
               "clip_grad_norm_ between backward and step (losses_10_clip, grad_norms_10_clip, clip_max_norm)",
    }
    meta = {"config": json.dumps(config, sort_keys=True),
            "files": f"step_{name}.safetensors (weights, batch, forward), step_{name}_grad.safetensors (grad.*), "
                     f"step_{name}_adamw.safetensors (updated.*, 10-step run, clipped 10-step run)"}
    return {f"step_{name}": main, f"step_{name}_grad": grad_file, f"step_{name}_adamw": adamw_file}, meta


# The loss-token options of the reference (model.loss_tokens) beyond each variant's default: the same weights, batch
# and noise as the variant's step_V file; one forward + backward; loss and every gradient.
LOSS_TOKEN_VARIANTS = [("milan", "patches"), ("milan", "masked"), ("kd", "patches"), ("mae_pixel", "patches")]


def loss_token_file(name, tokens, teacher, main):
    v = VARIANTS[name]
    model = build_student(v)
    model.loss_tokens = tokens
    for k, t in model.state_dict().items():
        assert torch.equal(t, main[f"model.{k}"]), k
    noise_key = "exp_noise" if v["noise"] == "exp" else "uniform_noise"
    out = forward_step(model, teacher, v, main["images"], main[noise_key])
    out["loss"].backward()
    for k in ("ids_keep", "mask"):
        assert torch.equal(out[k], main[k]), k
    # the same value from the default-loss predictions, computed independently
    pred, mask = main["pred"].detach(), main["mask"]
    if not v["use_clip"]:
        per_patch = ((pred - model.pixel_target(main["images"])) ** 2).mean(dim=-1)
        expect = per_patch.mean()
    else:
        p = pred / pred.norm(dim=2, keepdim=True)
        t = main["target"] / main["target"].norm(dim=2, keepdim=True)
        per_token = 2 - 2 * (p * t).sum(-1)
        expect = per_token[:, 1:].mean() if tokens == "patches" else (per_token[:, 1:] * mask).sum() / mask.sum()
    assert_close(f"{name} {tokens} loss vs formula", out["loss"].detach(), expect, 1e-6)
    grads = {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(g).all() for g in grads.values())
    result = {"loss": out["loss"].detach(), **grads}
    meta = {"config": json.dumps({"variant": name, "loss_tokens": tokens, "weights_batch_noise": f"step_{name}.safetensors",
                                  "loss": {"patches": "mean over the patch tokens (class token excluded)",
                                           "masked": "mean over the masked patch tokens"}[tokens]}, sort_keys=True)}
    print(f"  {name} / {tokens}: loss {result['loss'].item():.6f}", file=sys.stderr)
    return result, meta


def check_kd_against_milan(kd, milan):
    """kd shares the encoder weights, batch, mask noise (hence the mask and the latent) with the milan variant."""
    km, mm = kd["step_kd"], milan["step_milan"]
    enc = [k for k in km if k.startswith("model.") and not k.startswith("model.kd_pred.")]
    for k in enc + ["images", "exp_noise", "importance", "ids_shuffle", "ids_restore", "ids_keep", "ids_dump", "mask",
                    "latent"]:
        assert torch.equal(km[k], mm[k]), k
    assert torch.equal(km["target"], mr.kd_gather_target(mm["target"], km["ids_keep"]))
    for k in ("images_10", "exp_noise_10"):
        assert torch.equal(kd["step_kd_adamw"][k], milan["step_milan_adamw"][k]), k
    print(f"  kd vs milan: {len(enc)} encoder tensors, batch, masks, latent identical; target = gathered milan target",
          file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="print each written tensor's name, dtype and shape")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # single-threaded reductions: bit-identical output run to run
    os.makedirs(args.out, exist_ok=True)
    teacher = load_teacher()
    done = {}
    for name in VARIANTS:
        files, extra = variant(name, teacher)
        done[name] = files
        if VARIANTS[name].get("encoder_from"):
            check_kd_against_milan(files, done[VARIANTS[name]["encoder_from"]])
        metadata = {**BASE_METADATA, **extra}
        keys = [k for f in files.values() for k in f]
        assert len(keys) == len(set(keys)), "duplicate key across a variant's files"
        for fname, result in files.items():
            write_fixture(os.path.join(args.out, fname + ".safetensors"), result, metadata,
                          (torch.float32, torch.int64), 700_000, 44 if args.list else None, REPO)
        print(f"  {name}: loss {files['step_' + name]['loss'].item():.6f}, losses_10 "
              f"{[round(x, 4) for x in files['step_' + name + '_adamw']['losses_10'].tolist()]}", file=sys.stderr)
    for k in ("images", "exp_noise", "importance", "ids_shuffle", "ids_keep", "mask", "latent", "target"):
        assert torch.equal(done["mae_feature"]["step_mae_feature"][k], done["milan"]["step_milan"][k]), k
    for name, tokens in LOSS_TOKEN_VARIANTS:
        result, extra = loss_token_file(name, tokens, teacher, done[name][f"step_{name}"])
        write_fixture(os.path.join(args.out, f"step_{name}_{tokens}.safetensors"), result,
                      {**BASE_METADATA, **extra}, (torch.float32, torch.int64), 700_000,
                      44 if args.list else None, REPO)


if __name__ == "__main__":
    main()
