#!/usr/bin/env python3
"""PyTorch reference of the MILAN pretraining model (zejiangh/MILAN `models_milan.py`, HEAD 7dcfe0ff), written from
/work/shared/docs/reference-milan.md §1-5 (the released code's behaviour, not the paper's wording).

Self-contained: plain torch + numpy (no timm/open_clip). Contents:
  - timm 0.3.2 building blocks: `PatchEmbed`, `Mlp`, `Attention`, `Block` (pre-norm, LayerNorm eps 1e-6, erf GELU,
    fused qkv with bias, rows [0:D]=q, [D:2D]=k, [2D:3D]=v), plus MILAN's `Attention_fordecoder`/`Block_fordecoder`.
  - `get_2d_sincos_pos_embed` (MAE util/pos_embed.py; float64 then cast to float32; column coordinate first).
  - `MaskedAutoencoderViT`: encoder, `random_masking` / `attention_masking` with the randomness passed in explicitly,
    the prompting decoder (`change_decoder=True`, MILAN) or the standard MAE decoder (`change_decoder=False`),
    MILAN feature loss (2 - 2cos over all B x (1+L) tokens, or masked patches only) and MAE pixel loss
    (norm_pix_loss, masked patches only). MAE init (`initialize_weights`). `kd=True`: the knowledge-distillation
    ablation (paper Table 10, MILAN without decoder): no decoder; `kd_pred` Linear(D, C) on the encoder output
    regresses the teacher features of the class token and the visible tokens (`kd_gather_target`).
  - `CLIPVisualTeacher`: the CLIP visual tower as MILAN uses it (ln_post + proj on every token; last block's
    head-averaged attention), OpenAI/open_clip state-dict names without the `visual.` prefix.
  - `add_weight_decay` (timm 0.3.2), `make_optimizer` (torch.optim.AdamW, betas (0.9, 0.95), eps 1e-8, wd 0.05) and
    an explicit `adamw_step_reference` used to cross-check it; `clip_grad_norm_reference`, the explicit formula of
    torch.nn.utils.clip_grad_norm_ (norm_type 2).

Run it directly for the self-checks (teacher vs Tests/Fixtures/models/clip_openclip.safetensors, multinomial
equivalence, sin-cos spot values, prompting-decoder bookkeeping vs a spatial-order formulation, autograd vs a float64
directional finite difference (MILAN and kd), AdamW vs the explicit formula, clip_grad_norm_ vs the explicit formula):

    /work/venv-ref/bin/python tools/milan_reference.py
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP_FIXTURE = os.path.join(REPO, "Tests", "Fixtures", "models", "clip_openclip.safetensors")

LN_EPS = 1e-6        # student: partial(nn.LayerNorm, eps=1e-6)
CLIP_LN_EPS = 1e-5   # teacher: nn.LayerNorm default


# ----------------------------------------------------------------------------------------------- 2-D sin-cos

def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    """MAE util/pos_embed.py: omega in float64 (np.float); out [M, D] = [sin(pos*omega), cos(pos*omega)]."""
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000 ** omega
    pos = pos.reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed_from_grid(embed_dim, grid):
    assert embed_dim % 2 == 0
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # grid[0] = column (w) coordinate
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # grid[1] = row (h) coordinate
    return np.concatenate([emb_h, emb_w], axis=1)


def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):
    """[grid*grid (+1), D]; token 1 + i*grid + j (row i, column j) = [sin(jw), cos(jw), sin(iw), cos(iw)],
    w_m = 10000^(-m/(D/4)); class row all zeros when cls_token."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


# ----------------------------------------------------------------------------------------------- timm 0.3.2 blocks

class PatchEmbed(nn.Module):
    """Conv2d(in_chans, D, k=p, s=p) with bias; output flattened row-major -> [B, L, D]."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        B, C, H, W = x.shape
        assert (H, W) == self.img_size, (H, W)
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """timm 0.3.2 Attention: fused qkv Linear(D, 3D, bias), reshape (B, N, 3, H, D/H), scale head_dim**-0.5 applied
    to q @ k^T, softmax, @ v, proj Linear(D, D, bias)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, eps=LN_EPS):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def gather_tokens(x, ids):
    """x [B, N, C], ids [B, M] -> x[b, ids[b, m]] [B, M, C] (torch.gather along the token axis)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Attention_fordecoder(nn.Module):
    """MILAN prompting attention. q from the (normalised) mask tokens only; k/v from the full sequence
    [Z_cls, unshuffle(cat(Z_visible, x))] (spatial order), projected by this layer's own kv Linear(d, 2d):
    output columns [0:d] = k, [d:2d] = v (reshape (B, N, 2, H, d/H))."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, dim * 2, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, fix_encoding_tokens, ids_restore):
        x_ = torch.cat([fix_encoding_tokens[:, 1:], x], dim=1)
        assert x_.shape[1] == ids_restore.shape[1]
        x_ = gather_tokens(x_, ids_restore)                       # unshuffle -> spatial order
        x_ = torch.cat([fix_encoding_tokens[:, :1], x_], dim=1)   # cls prompt first
        B, N, C = x_.shape
        M = x.shape[1]
        q = self.q(x).reshape(B, M, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        kv = self.kv(x_).reshape(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, M, C))


class Block_fordecoder(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, eps=LN_EPS):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention_fordecoder(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, fix_encoding_tokens, ids_restore):
        x = x + self.attn(self.norm1(x), fix_encoding_tokens, ids_restore)
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------------------------- masking

def _mask_outputs(x, ids_shuffle, len_keep):
    N, L, D = x.shape
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    ids_dump = ids_shuffle[:, len_keep:]
    x_masked = gather_tokens(x, ids_keep)
    mask = torch.ones([N, L], dtype=x.dtype, device=x.device)  # 0 keep, 1 remove
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_masked, mask, ids_restore, ids_shuffle, ids_keep, ids_dump


def random_masking(x, mask_ratio, noise):
    """MAE/MILAN random_masking with the U(0,1) noise [N, L] passed in: ids_shuffle = argsort(noise) ascending
    (small is keep). Returns x_masked [N, len_keep, D], mask [N, L] (1 = removed), ids_restore, ids_shuffle,
    ids_keep, ids_dump."""
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    return _mask_outputs(x, ids_shuffle, len_keep)


def semantic_shuffle(importance, exp_noise):
    """torch.multinomial(importance, L, replacement=False) with its Exp(1) draws made explicit:
    ids_shuffle = argsort_desc(importance / exp_noise) per row (PyTorch Distributions.cpp: q ~ Exp(1),
    topk(p / q, n)). Stable descending sort (ties, e.g. zero importances, keep index order)."""
    keys = importance / exp_noise
    return torch.argsort(keys, dim=1, descending=True, stable=True)


def attention_masking(x, mask_ratio, importance, exp_noise):
    """MILAN attention_masking (semantic-aware sampling) with the Exp(1) draws [N, L] passed in."""
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    return _mask_outputs(x, semantic_shuffle(importance, exp_noise), len_keep)


# ----------------------------------------------------------------------------------------------- student

class MaskedAutoencoderViT(nn.Module):
    """MILAN's MaskedAutoencoderViT.

    change_decoder=True : prompting decoder (Block_fordecoder; keys decoder_blocks.{j}.attn.{q,kv,proj}).
    change_decoder=False: the standard MAE decoder (Block; keys decoder_blocks.{j}.attn.{qkv,proj}).
    use_clip=True : decoder_pred -> pred_dim (= teacher output dim), prediction keeps the class token
                    [B, 1+L, C]; feature loss 2 - 2cos (all tokens by default; `loss_tokens` "patches" drops the
                    class token, "masked" keeps the masked patches only; `loss_masked_only` = "masked").
                    use_clip=False: decoder_pred -> p*p*in_chans, class token removed, MAE pixel loss (masked
                    patches; `loss_tokens` "patches": every patch).
    kd=True (requires use_clip): knowledge-distillation ablation (paper Table 10, "MILAN without decoder"). No decoder
                    at all (no mask_token, decoder_embed, decoder_pos_embed, decoder_blocks, decoder_norm,
                    decoder_pred; the decoder_* arguments and change_decoder are ignored). One head
                    kd_pred = Linear(embed_dim, pred_dim) (keys kd_pred.weight [C, D], kd_pred.bias [C]; registered
                    after `norm`, MAE init: xavier_uniform weight, zero bias). pred = kd_pred(latent) [N, 1+K, C]
                    (latent = forward_encoder output: cls first, visible tokens in ids_keep order, after `norm`);
                    target = teacher tokens at the same positions, kd_gather_target(target, ids_keep) =
                    cat(target[:, :1], target[:, 1 + ids_keep]) [N, 1+K, C]; loss = milan_feature_loss(pred, target)
                    (mean over all N x (1+K) tokens of 2 - 2cos, no eps). Masking as the other variants (attn_mask
                    selects attention_masking / random_masking).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_pix_loss=False, use_clip=False, attn_mask=False, change_decoder=True, pred_dim=512,
                 loss_masked_only=False, kd=False, loss_tokens=None):
        super().__init__()
        assert use_clip or not kd, "kd regresses teacher features (use_clip=True)"
        # encoder (registration order as the reference, so the global-RNG consumption matches it)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.kd = kd
        if kd:   # knowledge-distillation ablation: one Linear head instead of the decoder
            self.kd_pred = nn.Linear(embed_dim, pred_dim, bias=True)
        else:
            self._build_decoder(num_patches, patch_size, in_chans, embed_dim, decoder_embed_dim, decoder_depth,
                                decoder_num_heads, mlp_ratio, use_clip, change_decoder, pred_dim)

        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.use_clip = use_clip
        self.attn_mask = attn_mask
        self.change_decoder = change_decoder
        self.loss_masked_only = loss_masked_only
        # which tokens the loss averages over: "all" (feature target: class token + every patch; the released
        # code), "patches" (no class token; pixel target: every patch), "masked" (masked patches; MAE's pixel loss)
        self.loss_tokens = loss_tokens or ("masked" if loss_masked_only or not use_clip else "all")
        self.initialize_weights()

    def _build_decoder(self, num_patches, patch_size, in_chans, embed_dim, decoder_embed_dim, decoder_depth,
                       decoder_num_heads, mlp_ratio, use_clip, change_decoder, pred_dim):
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        blk = Block_fordecoder if change_decoder else Block
        self.decoder_blocks = nn.ModuleList([blk(decoder_embed_dim, decoder_num_heads, mlp_ratio)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=LN_EPS)
        out = pred_dim if use_clip else patch_size ** 2 * in_chans
        self.decoder_pred = nn.Linear(decoder_embed_dim, out, bias=True)

    # ---- init (MAE initialize_weights / _init_weights)
    def initialize_weights(self):
        g = int(self.patch_embed.num_patches ** 0.5)
        pe = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], g, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        if not self.kd:
            dpe = get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], g, cls_token=True)
            self.decoder_pos_embed.data.copy_(torch.from_numpy(dpe).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # conv bias keeps PyTorch's default init
        torch.nn.init.normal_(self.cls_token, std=0.02)
        if not self.kd:
            torch.nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)   # kd: kd_pred gets xavier_uniform / zero bias like the decoder Linears

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # ---- patches
    def patchify(self, imgs):
        """[N, C, H, W] -> [N, L, p*p*C], per patch ordered (row-in-patch, column-in-patch, channel)."""
        p = self.patch_embed.patch_size[0]
        assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
        h = w = imgs.shape[2] // p
        c = imgs.shape[1]
        x = imgs.reshape(imgs.shape[0], c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * w, p * p * c)

    def unpatchify(self, x):
        p = self.patch_embed.patch_size[0]
        h = w = int(x.shape[1] ** 0.5)
        assert h * w == x.shape[1]
        c = x.shape[-1] // (p * p)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    # ---- encoder
    def forward_encoder(self, imgs, mask_ratio, noise=None, importance=None):
        """noise: U(0,1) [N, L] for random masking, or Exp(1) draws [N, L] for attention masking (with
        `importance` [N, L] and attn_mask=True). Returns latent [N, 1+len_keep, D] (after the final norm; cls first,
        visible tokens in ids_keep order), mask, ids_restore, ids_shuffle, ids_keep, ids_dump."""
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:, :]                        # pos BEFORE masking
        if self.use_clip and self.attn_mask:
            assert importance is not None
            x, mask, ids_restore, ids_shuffle, ids_keep, ids_dump = attention_masking(x, mask_ratio, importance,
                                                                                       noise)
        else:
            x, mask, ids_restore, ids_shuffle, ids_keep, ids_dump = random_masking(x, mask_ratio, noise)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x, mask, ids_restore, ids_shuffle, ids_keep, ids_dump

    # ---- decoders
    def _unshuffle_with_mask_tokens(self, x, ids_restore):
        """decoder-embedded encoder output [N, 1+K, d] -> [N, 1+L, d] spatial order, cls first, + decoder pos."""
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = gather_tokens(x_, ids_restore)
        x = torch.cat([x[:, :1, :], x_], dim=1)
        return x + self.decoder_pos_embed

    def forward_decoder_prompt(self, x, ids_restore, ids_keep, ids_dump):
        x = self._unshuffle_with_mask_tokens(self.decoder_embed(x), ids_restore)
        Z = torch.cat([x[:, :1, :], gather_tokens(x[:, 1:, :], ids_keep)], dim=1)   # fixed prompts
        x = gather_tokens(x[:, 1:, :], ids_dump)                                    # mask tokens, ids_dump order
        for blk in self.decoder_blocks:
            x = blk(x, Z, ids_restore)
        x_ = gather_tokens(torch.cat([Z[:, 1:, :], x], dim=1), ids_restore)
        x = torch.cat([Z[:, :1, :], x_], dim=1)
        x = self.decoder_pred(self.decoder_norm(x))
        return x if self.use_clip else x[:, 1:, :]

    def forward_decoder_mae(self, x, ids_restore):
        x = self._unshuffle_with_mask_tokens(self.decoder_embed(x), ids_restore)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x if self.use_clip else x[:, 1:, :]

    def forward_decoder(self, x, ids_restore, ids_keep, ids_dump):
        if self.change_decoder:
            return self.forward_decoder_prompt(x, ids_restore, ids_keep, ids_dump)
        return self.forward_decoder_mae(x, ids_restore)

    # ---- losses
    def pixel_target(self, imgs):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased (N-1), as MAE
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs, pred, mask, target=None):
        if not self.use_clip:
            target = self.pixel_target(imgs)
            loss = ((pred - target) ** 2).mean(dim=-1)      # [N, L]
            assert self.loss_tokens in ("masked", "patches"), "the pixel target has no class token"
            if self.loss_tokens == "patches":
                return loss.mean()                          # every patch
            return (loss * mask).sum() / mask.sum()         # masked patches only (MAE)
        return milan_feature_loss(pred, target, mask, tokens=self.loss_tokens)

    def forward(self, imgs, mask_ratio=0.75, noise=None, target=None, importance=None):
        """imgs [N, C, H, W]; noise: U(0,1) or Exp(1) [N, L] (see forward_encoder); target: teacher tokens
        [N, 1+L, C] (use_clip); importance [N, L] (attn_mask). Returns a dict with loss, pred, mask, latent and the
        index tensors; kd also returns kd_target (the gathered target [N, 1+K, C] that the loss compares pred with)."""
        latent, mask, ids_restore, ids_shuffle, ids_keep, ids_dump = self.forward_encoder(imgs, mask_ratio, noise,
                                                                                          importance)
        out = dict(mask=mask, latent=latent, ids_restore=ids_restore, ids_shuffle=ids_shuffle, ids_keep=ids_keep,
                   ids_dump=ids_dump)
        if self.kd:
            out["pred"] = self.kd_pred(latent)                       # [N, 1+K, C]
            out["kd_target"] = kd_gather_target(target, ids_keep)    # [N, 1+K, C]
            assert self.loss_tokens in ("all", "patches"), "kd predicts no masked patch"
            out["loss"] = milan_feature_loss(out["pred"], out["kd_target"], tokens=self.loss_tokens)
            return out
        out["pred"] = self.forward_decoder(latent, ids_restore, ids_keep, ids_dump)
        out["loss"] = self.forward_loss(imgs, out["pred"], mask, target)
        return out


def kd_gather_target(target, ids_keep):
    """Teacher tokens [N, 1+L, C] at the positions the encoder sees: class token (index 0), then tokens 1 + ids_keep
    (ids_keep order) -> [N, 1+K, C] (aligned with the encoder latent)."""
    return torch.cat([target[:, :1], gather_tokens(target[:, 1:], ids_keep)], dim=1)


def milan_feature_loss(pred, target, mask=None, tokens=None):
    """2 - 2 cos per token, L2 normalisation without epsilon, over `tokens`: "all" = the mean over all N x (1+L)
    tokens (class token included, the released code); "patches" = the mean over the patch tokens (index 1 on);
    "masked" = the mean over the masked patch tokens only (mask [N, L], 1 = removed). Default: "masked" when a mask
    is given, else "all"."""
    tokens = tokens or ("all" if mask is None else "masked")
    pred = pred / pred.norm(dim=2, keepdim=True)
    target = target / target.norm(dim=2, keepdim=True)
    loss = 2 - 2 * (pred * target).sum(dim=-1)   # [N, 1+L]
    if tokens == "all":
        return loss.mean()
    if tokens == "patches":
        return loss[:, 1:].mean()
    assert tokens == "masked" and mask is not None
    return (loss[:, 1:] * mask).sum() / mask.sum()


# ----------------------------------------------------------------------------------------------- CLIP teacher

class _CLIPAttention(nn.Module):
    """nn.MultiheadAttention (batch-first self-attention) with attention weights averaged over heads."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows [q; k; v]
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x):
        B, N, W = x.shape
        dh = W // self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(W, dim=-1)
        q, k, v = (t.reshape(B, N, self.heads, dh).transpose(1, 2) for t in (q, k, v))
        probs = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(dh), dim=-1)   # [B, H, N, N]
        o = (probs @ v).transpose(1, 2).reshape(B, N, W)
        return self.out_proj(o), probs.mean(1)


class _CLIPMlp(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x):
        x = self.c_fc(x)
        return self.c_proj(x * torch.sigmoid(1.702 * x))   # QuickGELU


class _CLIPBlock(nn.Module):
    def __init__(self, width, heads, mlp_ratio):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=CLIP_LN_EPS)
        self.attn = _CLIPAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=CLIP_LN_EPS)
        self.mlp = _CLIPMlp(width, int(width * mlp_ratio))

    def forward(self, x):
        a, w = self.attn(self.ln_1(x))
        x = x + a
        return x + self.mlp(self.ln_2(x)), w


class _CLIPTransformer(nn.Module):
    def __init__(self, width, layers, heads, mlp_ratio):
        super().__init__()
        self.resblocks = nn.ModuleList([_CLIPBlock(width, heads, mlp_ratio) for _ in range(layers)])


class CLIPVisualTeacher(nn.Module):
    """OpenAI CLIP VisionTransformer as MILAN's clip_demo.py uses it (finetune=False): conv1 (no bias), class token
    first, + positional_embedding, ln_pre, residual blocks (QuickGELU, LN eps 1e-5), ln_post on ALL tokens, @ proj.
    forward(img) -> (tokens [B, 1+L, C], attention [B, 1+L, 1+L] of the last block, heads averaged).
    State-dict names = the `visual.*` keys of a CLIP checkpoint without the prefix."""

    def __init__(self, image_size=32, patch_size=8, width=48, layers=2, heads=3, mlp_ratio=4, output_dim=24):
        super().__init__()
        self.patch_size = patch_size
        g = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(g * g + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=CLIP_LN_EPS)
        self.transformer = _CLIPTransformer(width, layers, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width, eps=CLIP_LN_EPS)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, img):
        x = self.conv1(img).flatten(2).transpose(1, 2)                       # [B, L, W] row-major
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        attn = None
        for blk in self.transformer.resblocks:
            x, attn = blk(x)
        return self.ln_post(x) @ self.proj, attn

    @staticmethod
    def importance(attn):
        """[B, 1+L, 1+L] -> [B, L]: class-token query row, class-key column dropped, not renormalised."""
        return attn[:, 0, 1:]

    @classmethod
    def from_safetensors(cls, path=CLIP_FIXTURE, prefix="visual.", **cfg):
        from safetensors.torch import load_file
        sd = {k[len(prefix):]: v for k, v in load_file(path).items() if k.startswith(prefix)}
        model = cls(**cfg)
        model.load_state_dict(sd, strict=True)
        return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------- optimizer

def add_weight_decay(model, weight_decay=0.05, skip_list=()):
    """timm 0.3.2 optim_factory.add_weight_decay: no decay for 1-D params and names ending in '.bias' (and the skip
    list); everything else decays, INCLUDING cls_token and mask_token. Frozen params (pos tables) are left out.
    Returns [no_decay group, decay group] (timm's order)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def weight_decay_names(model, skip_list=()):
    """(no_decay names, decay names) with the add_weight_decay rule."""
    nd, d = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (nd if (len(param.shape) == 1 or name.endswith(".bias") or name in skip_list) else d).append(name)
    return nd, d


def make_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), eps=1e-8):
    """torch.optim.AdamW(add_weight_decay(model, wd), lr, betas=(0.9, 0.95)) as main_pretrain.py (eps default 1e-8);
    the single-tensor (for-loop) implementation, no amsgrad."""
    return torch.optim.AdamW(add_weight_decay(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             foreach=False, fused=False)


def adamw_step_reference(p, g, m, v, step, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):
    """One torch.optim.AdamW step (single-tensor path) written out; step is 1-based after the increment.
    p <- p * (1 - lr*wd); m <- m + (g - m)(1 - b1); v <- b2 v + (1 - b2) g^2;
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). Returns new (p, m, v)."""
    b1, b2 = betas
    p = p * (1 - lr * weight_decay)
    m = m.lerp(g, 1 - b1)
    v = v * b2 + (1 - b2) * g * g
    bc1 = 1 - b1 ** step
    bc2 = 1 - b2 ** step
    denom = v.sqrt() / math.sqrt(bc2) + eps
    p = p - (lr / bc1) * (m / denom)
    return p, m, v


def clip_grad_norm_reference(grads, max_norm, eps=1e-6):
    """torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2, foreach=False) written out (torch 2.x):
    total = ||[||g_1||_2, ..., ||g_n||_2]||_2 (vector_norm of the stacked per-tensor float32 norms);
    coef = min(max_norm / (total + 1e-6), 1); every g <- g * coef (also when coef == 1). Returns (clipped, total)."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)
    coef = torch.clamp(max_norm / (total + eps), max=1.0)
    return [g * coef for g in grads], total


# ----------------------------------------------------------------------------------------------- self-checks

def prompt_decoder_spatial(model, latent, ids_keep, mask):
    """Independent formulation of the prompting decoder in spatial order (a boolean mask instead of the
    ids_restore/ids_dump gathers): every position carries a state; per layer the k/v input is norm1(state) at masked
    positions and the fixed prompt at the class/visible positions, queries are computed everywhere but only masked
    positions are updated. Used to cross-check the gather bookkeeping."""
    x = model.decoder_embed(latent)
    N, _, d = x.shape
    L = mask.shape[1]
    full = model.mask_token.expand(N, L, d).clone()
    for b in range(N):
        full[b, ids_keep[b]] = x[b, 1:]          # visible token j of the latent sits at spatial ids_keep[b, j]
    full = torch.cat([x[:, :1], full], 1) + model.decoder_pos_embed
    upd = torch.cat([torch.zeros(N, 1, dtype=torch.bool), mask.bool()], 1).unsqueeze(-1)   # [N, 1+L, 1]
    state = full
    for blk in model.decoder_blocks:
        a = blk.attn
        normed = blk.norm1(state)
        k, v = a.kv(torch.where(upd, normed, full)).chunk(2, dim=-1)
        q = a.q(normed)
        H = a.num_heads
        sh = lambda t: t.reshape(N, 1 + L, H, d // H).transpose(1, 2)  # noqa: E731
        probs = torch.softmax(sh(q) @ sh(k).transpose(-1, -2) * a.scale, dim=-1)
        new = state + a.proj((probs @ sh(v)).transpose(1, 2).reshape(N, 1 + L, d))
        new = new + blk.mlp(blk.norm2(new))
        state = torch.where(upd, new, full)
    out = model.decoder_pred(model.decoder_norm(state))
    return out if model.use_clip else out[:, 1:]


def _self_check():
    from safetensors.torch import load_file
    torch.set_num_threads(1)

    # 1. teacher vs the committed open_clip fixture
    f = load_file(CLIP_FIXTURE)
    teacher = CLIPVisualTeacher.from_safetensors()
    with torch.no_grad():
        tok, attn = teacher(f["input"])
    e_tok = (tok - f["tokens"]).abs().max().item()
    e_att = (CLIPVisualTeacher.importance(attn) - f["attn_cls"]).abs().max().item()
    assert e_tok < 1e-5 and e_att < 1e-6, (e_tok, e_att)
    print(f"teacher vs clip_openclip.safetensors: tokens {e_tok:.2g}, attn_cls {e_att:.2g}")

    # 2. multinomial without replacement == argsort_desc(p / Exp(1)) for the same generator state
    imp = CLIPVisualTeacher.importance(attn)
    for seed in range(20):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        e = torch.empty_like(imp).exponential_(1.0, generator=g1)
        mult = torch.multinomial(imp, imp.shape[1], replacement=False, generator=g2)
        assert torch.equal(semantic_shuffle(imp, e), mult), seed
    print("torch.multinomial(p, L, replacement=False, generator=g) == argsort_desc(p / empty_like(p).exponential_"
          "(generator=g')) with g' at the same state: 20/20 seeds")

    # 3. sin-cos spot values (reference-milan.md §4)
    pe = get_2d_sincos_pos_embed(512, 14, cls_token=True)
    k = 1 + 2 * 14 + 5
    assert np.allclose(pe[k, :3], [-0.95892, -0.99823, -0.92771], atol=1e-5), pe[k, :3]
    assert np.allclose(pe[k, 256:259], [0.90930, 0.95814, 0.98705], atol=1e-5), pe[k, 256:259]
    assert not pe[0].any()
    print("2-D sin-cos spot values OK")

    # 4. prompting decoder bookkeeping vs a spatial-order formulation; 5. directional derivative in float64
    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32,
               decoder_depth=2, decoder_num_heads=2, mlp_ratio=4.0, use_clip=True, attn_mask=True,
               change_decoder=True, pred_dim=24)
    model = MaskedAutoencoderViT(**cfg).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():
        target, attn2 = teacher.double()(x)
    imp2 = CLIPVisualTeacher.importance(attn2)
    e = torch.empty(2, 16, dtype=torch.float64).exponential_(1.0, generator=g)
    out = model(x, 0.75, e, target, imp2)
    with torch.no_grad():
        alt = prompt_decoder_spatial(model, out["latent"], out["ids_keep"], out["mask"])
    e_dec = (alt - out["pred"]).abs().max().item()
    assert e_dec < 1e-12, e_dec
    print(f"prompting decoder (gathers) vs spatial-order formulation: {e_dec:.2g}")

    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out["loss"], params)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    analytic = sum((gr * d).sum() for gr, d in zip(grads, dirs)).item()
    eps = 1e-6
    with torch.no_grad():
        vals = []
        for s in (eps, -eps):
            for p, d in zip(params, dirs):
                p.add_(s * d)
            vals.append(model(x, 0.75, e, target, imp2)["loss"].item())
            for p, d in zip(params, dirs):
                p.sub_(s * d)
    numeric = (vals[0] - vals[1]) / (2 * eps)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)
    print(f"autograd vs float64 central difference along a random direction: {analytic:.10g} vs {numeric:.10g}")

    # 6. AdamW (torch) vs the explicit formula, 3 steps
    model = model.float()
    opt = make_optimizer(model, lr=1e-3)
    nd, d = weight_decay_names(model)
    assert "cls_token" in d and "mask_token" in d and "pos_embed" not in nd + d
    wd = {n: (0.0 if n in nd else 0.05) for n in nd + d}
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state = {n: (p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p)) for n, p in named.items()}
    for step in range(1, 4):
        for n, p in named.items():
            p.grad = torch.randn(p.shape, generator=g)
        for n, p in named.items():
            q, m_, v_ = state[n]
            state[n] = adamw_step_reference(q, p.grad, m_, v_, step, 1e-3, wd[n])
        opt.step()
    e_opt = max((named[n] - state[n][0]).abs().max().item() for n in named)
    assert e_opt < 1e-7, e_opt
    print(f"torch.optim.AdamW vs explicit formula after 3 steps: {e_opt:.2g}")

    # 7. kd ablation: no decoder tensors; target gather and loss vs per-token loops; float64 directional derivative
    torch.manual_seed(0)
    kd = MaskedAutoencoderViT(**cfg, kd=True).double()
    keys = list(kd.state_dict())
    assert not any(k.startswith(("decoder_", "mask_token")) for k in keys) and keys[-2:] == ["kd_pred.weight",
                                                                                             "kd_pred.bias"], keys
    assert kd.kd_pred.weight.shape == (24, 48) and not kd.kd_pred.bias.any()
    nd, d = weight_decay_names(kd)
    assert "kd_pred.weight" in d and "kd_pred.bias" in nd and "cls_token" in d
    with torch.no_grad():
        for p in kd.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    out = kd(x, 0.75, e, target, imp2)
    assert out["pred"].shape == (2, 5, 24) and out["kd_target"].shape == (2, 5, 24)
    terms = []
    for b in range(2):
        pos = [0] + [1 + int(i) for i in out["ids_keep"][b]]
        for j, t in enumerate(pos):
            assert torch.equal(out["kd_target"][b, j], target[b, t])
            pr = kd.kd_pred(out["latent"][b, j])
            terms.append(2 - 2 * torch.dot(pr, target[b, t]) / (pr.norm() * target[b, t].norm()))
    e_kd = abs(torch.stack(terms).mean().item() - out["loss"].item())
    assert e_kd < 1e-14, e_kd
    params = [p for p in kd.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out["loss"], params)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    analytic = sum((gr * d_).sum() for gr, d_ in zip(grads, dirs)).item()
    with torch.no_grad():
        vals = []
        for s in (eps, -eps):
            for p, d_ in zip(params, dirs):
                p.add_(s * d_)
            vals.append(kd(x, 0.75, e, target, imp2)["loss"].item())
            for p, d_ in zip(params, dirs):
                p.sub_(s * d_)
    numeric = (vals[0] - vals[1]) / (2 * eps)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)
    print(f"kd: no decoder keys, gathered target / loss vs per-token loop {e_kd:.2g}, autograd vs central "
          f"difference {analytic:.10g} vs {numeric:.10g}")

    # 8. clip_grad_norm_ vs the explicit formula (clipping and non-clipping max_norm)
    kd = kd.float()
    params = [p for p in kd.parameters() if p.requires_grad]
    for max_norm in (0.5, 1e6):
        gs = [torch.randn(p.shape, generator=g) for p in params]
        for p, g_ in zip(params, gs):
            p.grad = g_.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0, foreach=False)
        ref, total_ref = clip_grad_norm_reference(gs, max_norm)
        assert torch.equal(total, total_ref), (total, total_ref)
        assert all(torch.equal(p.grad, r) for p, r in zip(params, ref))
    print("torch.nn.utils.clip_grad_norm_ vs explicit formula: bit-identical (clipping and not)")


if __name__ == "__main__":
    _self_check()
