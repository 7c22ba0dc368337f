#!/usr/bin/env python3
"""Writes the image fixtures described in tools/FIXTURES.md ("Image fixtures").

Run with the pinned reference environment (tools/setup_reference_env.sh):

    /work/venv-ref/bin/python tools/make_image_fixtures.py [--out DIR] [--cache DIR] [--list] [--no-system-check]

Versions used to write the committed files: Pillow 13.0.0 (libjpeg-turbo 3.2.0, zlib-ng 2.3.3), torch 2.13.0+cpu,
torchvision 0.28.0, timm 1.0.31, numpy 2.4.6, safetensors 0.8.0.

Output (relative to the repository root), all under Tests/Fixtures/images/:
  files/*                    small image files written by Pillow (plus a hand-written 16-bit RGB PNG and broken files)
  files/tiny_folder/         an ImageNet-style <class>/<image> tree for folder-dataset tests
  decoded.safetensors        what Pillow gives for every valid file after .convert("RGB"), U8 [H,W,3]
  transforms.safetensors     torchvision (PIL path) RandomResizedCrop, flip, eval Resize+CenterCrop, ToTensor+Normalize
  randaugment.safetensors    timm RandAugment rand-m9-mstd0.5-inc1: every op at fixed magnitude and sign, plus whole
                             seeded RandAugment calls with their random draws

External assets: the scikit-image sample photos astronaut.png and chelsea.png (PyPI scikit-image==0.26.0, extracted
from the wheel in --cache/skimage, fetched with `pip download --no-deps` if missing).

Every library output is cross-checked bit-exactly against an explicit numpy re-implementation of the documented
algorithm (Pillow's fixed-point resampler, its a=-1 affine bicubic, ImageEnhance blends, ImageOps LUTs, ...) before it
is written, so FIXTURES.md describes what was verified, not what was assumed. Unless --no-system-check is given, a
small C program is compiled against the system libjpeg (Debian libjpeg62-turbo) and libpng and its decodes of every
fixture file are compared with Pillow's (the result is printed, never written into a fixture).

Deterministic: no randomness except fixed seeds, canonical safetensors headers, Pillow encoders with fixed options;
re-running gives identical bytes (the script prints every file's sha256).
"""
import argparse
import glob
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

import numpy as np
import torch
from safetensors.torch import save_file

from reference_compat import canonicalize_header, sha256_file, skip_torchvision_fakes  # noqa: E402

skip_torchvision_fakes()

import PIL  # noqa: E402
import timm  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms as T  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from PIL import Image, features  # noqa: E402
from timm.data import auto_augment as aa  # noqa: E402
from timm.data import create_transform  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "Fixtures", "images")
DEFAULT_CACHE = os.environ.get("MILAN_CACHE", "/work/cache")
SKIMAGE_WHEEL = "scikit-image==0.26.0"
BICUBIC = Image.Resampling.BICUBIC
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_FILE = 300 * 1024
MAX_TOTAL = 900 * 1024


def base_metadata():
    return {"format": "pt", "generator": "tools/make_image_fixtures.py", "pillow": PIL.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "numpy": np.__version__}


def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------- photos

def _pip_download(spec, dest):
    os.makedirs(dest, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                    "-q", "-d", dest, spec], check=True)


def skimage_file(cache, member):
    d = os.path.join(cache, "skimage")
    path = os.path.join(d, member)
    if not os.path.exists(path):
        wheels = glob.glob(os.path.join(d, "scikit_image-0.26.0-*.whl"))
        if not wheels:
            _pip_download(SKIMAGE_WHEEL, d)
            wheels = glob.glob(os.path.join(d, "scikit_image-0.26.0-*.whl"))
        with zipfile.ZipFile(sorted(wheels)[0]) as z:
            z.extract(member, d)
    return path


def load_photos(cache):
    photos, shas = {}, {}
    for name in ("astronaut", "chelsea"):
        p = skimage_file(cache, f"skimage/data/{name}.png")
        shas[name] = sha256_file(p)
        photos[name] = Image.open(p).convert("RGB")
    return photos, shas


def u8(im):
    return np.asarray(im, dtype=np.uint8).copy()


# ----------------------------------------------------------------------------------------------- numpy emulations
# Each function re-implements one Pillow C routine exactly (same arithmetic type and operation order); the generator
# asserts that it reproduces Pillow's output bit for bit on the fixture inputs.

def emu_bicubic_resize_filter(x):
    """Pillow Resample.c bicubic_filter: Keys cubic convolution with a = -0.5."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def emu_precompute_coeffs(in_size, in0, in1, out_size):
    """Pillow Resample.c precompute_coeffs + normalize_coeffs_8bpc (bicubic): returns [(xmin, [int32 weights])]."""
    scale = float(np.float32(in1) - np.float32(in0)) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    out = []
    for xx in range(out_size):
        center = float(np.float32(in0)) + (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)  # C (int) truncates toward zero
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [emu_bicubic_resize_filter((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = sum(w)  # left-to-right double sum, as the C loop
        if ww != 0.0:
            w = [v / ww for v in w]
        k = [int(-0.5 + v * (1 << 22)) if v < 0 else int(0.5 + v * (1 << 22)) for v in w]
        out.append((xmin, k))
    return out


def _clip8_fixed(ss):
    return np.clip(ss >> 22, 0, 255)  # arithmetic shift (floor) of the 22-bit fixed-point sum, then clamp


def emu_resize(img, size_wh, box=None):
    """Pillow Image.resize(size, BICUBIC, box) for an 8-bit image [H,W,C] (ImagingResampleInner)."""
    H, W, C = img.shape
    ow, oh = size_wh
    box = (0, 0, W, H) if box is None else box
    need_h = ow != W or box[0] != 0 or box[2] != ow
    need_v = oh != H or box[1] != 0 or box[3] != oh
    vco = emu_precompute_coeffs(H, box[1], box[3], oh)
    y_first = vco[0][0]
    y_last = vco[-1][0] + len(vco[-1][1])
    src = img.astype(np.int64)
    if need_h:
        hco = emu_precompute_coeffs(W, box[0], box[2], ow)
        tmp = np.zeros((y_last - y_first, ow, C), np.int64)
        for xx, (xmin, k) in enumerate(hco):
            ss = np.full((y_last - y_first, C), 1 << 21, np.int64)
            for i, kv in enumerate(k):
                ss += src[y_first:y_last, xmin + i, :] * kv
            tmp[:, xx, :] = _clip8_fixed(ss)
        src, off = tmp, y_first
    else:
        off = 0
    if need_v:
        out = np.zeros((oh, src.shape[1], C), np.int64)
        for yy, (ymin, k) in enumerate(vco):
            ss = np.full((src.shape[1], C), 1 << 21, np.int64)
            for i, kv in enumerate(k):
                ss += src[ymin - off + i, :, :] * kv
            out[yy] = _clip8_fixed(ss)
        src = out
    return src.astype(np.uint8)


def _bicubic_a1(v1, v2, v3, v4, d):
    """Pillow Geometry.c BICUBIC macro (Keys cubic convolution with a = -1), double precision, same op order."""
    p1 = v2
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


def emu_affine_bicubic(img, matrix, fill):
    """Pillow Image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill) for RGB (ImagingGenericTransform)."""
    H, W, C = img.shape
    a0, a1, a2, a3, a4, a5 = [float(v) for v in matrix]
    yy, xx = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    xo, yo = xx + 0.5, yy + 0.5
    xin = a0 * xo + a1 * yo + a2
    yin = a3 * xo + a4 * yo + a5
    inside = (xin >= 0.0) & (xin < W) & (yin >= 0.0) & (yin < H)
    xf, yf = xin - 0.5, yin - 0.5
    x0, y0 = np.floor(xf), np.floor(yf)
    dx, dy = xf - x0, yf - y0
    x0 = x0.astype(np.int64) - 1
    y0 = y0.astype(np.int64) - 1
    src = img.astype(np.float64)
    cols = [np.clip(x0 + k, 0, W - 1) for k in range(4)]
    rows = [np.clip(y0 + k, 0, H - 1) for k in range(4)]
    out = np.empty((H, W, C), np.uint8)
    for c in range(C):
        band = src[:, :, c]
        v = [_bicubic_a1(*[band[rows[r], cols[k]] for k in range(4)], dx) for r in range(4)]
        val = _bicubic_a1(v[0], v[1], v[2], v[3], dy)
        res = np.where(val <= 0.0, 0.0, np.where(val >= 255.0, 255.0, np.trunc(np.clip(val, 0, 255))))
        res = np.where(inside, res, fill[c])
        out[:, :, c] = res.astype(np.uint8)
    return out


def pil_rotate_matrix(degrees, w, h):
    """The inverse affine matrix PIL Image.rotate(degrees) passes to transform (center = (w/2, h/2))."""
    angle = degrees % 360.0
    cx, cy = w / 2, h / 2
    angle = -math.radians(angle)
    m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
         round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
    a, b, c, d, e, f = m
    m[2], m[5] = a * -cx + b * -cy + c, d * -cx + e * -cy + f
    m[2] += cx
    m[5] += cy
    return m


def emu_blend(degenerate, img, factor):
    """Pillow Blend.c ImagingBlend(degenerate, img, (float)factor): float32 math, truncation toward zero."""
    alpha = np.float32(factor)
    if alpha == 0.0:
        return degenerate.copy()
    if alpha == 1.0:
        return img.copy()
    in1 = degenerate.astype(np.float32)
    diff = (img.astype(np.int32) - degenerate.astype(np.int32)).astype(np.float32)
    val = in1 + alpha * diff  # float32 product, float32 sum
    if 0 <= alpha <= 1.0:
        return np.trunc(val).astype(np.uint8)
    return np.where(val <= 0, 0, np.where(val >= 255, 255, np.trunc(np.clip(val, 0, 255)))).astype(np.uint8)


def emu_rgb_to_l(img):
    """Pillow Convert.c rgb2l: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16."""
    r, g, b = [img[..., i].astype(np.int64) for i in range(3)]
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def emu_contrast_degenerate(img):
    lum = emu_rgb_to_l(img)
    hist = np.bincount(lum.ravel(), minlength=256)
    mean = sum(j * int(hist[j]) for j in range(256)) / int(hist.sum())
    m = int(mean + 0.5)
    return np.full_like(img, m), m


def emu_smooth(img):
    """Pillow Filter.c ImagingFilter3x3 with ImageFilter.SMOOTH ((1,1,1,1,5,1,1,1,1) / 13, offset 0): float32,
    +0.5 then truncation, one-pixel border copied unchanged."""
    k1 = np.float32(1) / np.float32(13)
    k5 = np.float32(5) / np.float32(13)
    f = img.astype(np.float32)
    out = img.copy()
    H, W, _ = img.shape

    def row(r, kmid):  # (in[x-1]*k0 + in[x]*k1) + in[x+1]*k2, all float32
        return (f[r, 0:W - 2] * k1 + f[r, 1:W - 1] * kmid) + f[r, 2:W] * k1

    for y in range(1, H - 1):
        ss = np.full((W - 2, img.shape[2]), np.float32(0.5), np.float32)
        ss = ss + row(y + 1, k1)
        ss = ss + row(y, k5)
        ss = ss + row(y - 1, k1)
        ss = np.clip(ss, np.float32(0), np.float32(255))
        out[y, 1:W - 1] = np.trunc(ss).astype(np.uint8)
    return out


def emu_lut(img, lut):
    lut = np.clip(np.asarray(lut, dtype=np.int64), 0, 255).astype(np.uint8)  # Image.point clips LUT entries
    if lut.size == 256:
        return lut[img]
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[..., c] = lut[256 * c:256 * (c + 1)][img[..., c]]
    return out


def emu_autocontrast_lut(img):
    lut = []
    for c in range(img.shape[2]):
        h = np.bincount(img[..., c].ravel(), minlength=256)
        nz = np.nonzero(h)[0]
        lo, hi = int(nz[0]), int(nz[-1])
        if hi <= lo:
            lut += list(range(256))
            continue
        scale = 255.0 / (hi - lo)
        offset = -lo * scale
        lut += [min(255, max(0, int(ix * scale + offset))) for ix in range(256)]
    return lut


def emu_equalize_lut(img):
    lut = []
    for c in range(img.shape[2]):
        h = [int(v) for v in np.bincount(img[..., c].ravel(), minlength=256)]
        histo = [v for v in h if v]
        step = (sum(histo) - histo[-1]) // 255 if len(histo) > 1 else 0
        if not step:
            lut += list(range(256))
            continue
        n = step // 2
        for i in range(256):
            lut.append(n // step)
            n += h[i]
    return lut


def emu_op(name, img, args, fill):
    """The 15 rand-*-inc1 ops on an RGB uint8 array, from the formulas in FIXTURES.md."""
    H, W, _ = img.shape
    if name == "AutoContrast":
        return emu_lut(img, emu_autocontrast_lut(img))
    if name == "Equalize":
        return emu_lut(img, emu_equalize_lut(img))
    if name == "Invert":
        return emu_lut(img, [255 - i for i in range(256)])
    if name == "PosterizeIncreasing":
        bits = args[0]
        if bits >= 8:
            return img.copy()
        return emu_lut(img, [i & ~(2 ** (8 - bits) - 1) for i in range(256)])
    if name == "SolarizeIncreasing":
        return emu_lut(img, [i if i < args[0] else 255 - i for i in range(256)])
    if name == "SolarizeAdd":
        return emu_lut(img, [min(255, i + args[0]) if i < 128 else i for i in range(256)])
    if name == "ColorIncreasing":
        grey = emu_rgb_to_l(img)
        return emu_blend(np.repeat(grey[..., None], 3, axis=2), img, args[0])
    if name == "ContrastIncreasing":
        return emu_blend(emu_contrast_degenerate(img)[0], img, args[0])
    if name == "BrightnessIncreasing":
        return emu_blend(np.zeros_like(img), img, args[0])
    if name == "SharpnessIncreasing":
        return emu_blend(emu_smooth(img), img, args[0])
    if name == "Rotate":
        if args[0] % 360.0 == 0:
            return img.copy()
        return emu_affine_bicubic(img, pil_rotate_matrix(args[0], W, H), fill)
    return emu_affine_bicubic(img, affine_matrix(name, args, W, H), fill)


def affine_matrix(name, args, w, h):
    if name == "Rotate":
        return pil_rotate_matrix(args[0], w, h)
    if name == "ShearX":
        return [1, args[0], 0, 0, 1, 0]
    if name == "ShearY":
        return [1, 0, 0, args[0], 1, 0]
    if name == "TranslateXRel":
        return [1, 0, args[0] * w, 0, 1, 0]
    if name == "TranslateYRel":
        return [1, 0, 0, 0, 1, args[0] * h]
    return None


def assert_equal(what, got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if not np.array_equal(got, want):
        d = np.abs(got.astype(np.int64) - want.astype(np.int64))
        raise AssertionError(f"{what}: {int((d > 0).sum())} values differ, max {int(d.max())}")


# ----------------------------------------------------------------------------------------------- 1. codec files

def write_png_rgb16(path, arr16):
    """Minimal 16-bit RGB PNG writer (Pillow cannot write 48-bit PNGs): IHDR, one IDAT (filter 0), IEND."""
    h, w, _ = arr16.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + arr16[y].astype(">u2").tobytes() for y in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def pillow_error(path):
    """Type and path-free message of the exception Pillow raises on Image.open(path).convert('RGB')."""
    try:
        with Image.open(path) as im:
            im.convert("RGB")
    except Exception as e:  # noqa: BLE001
        msg = str(e).replace(path, os.path.basename(path)).replace(repr(path), repr(os.path.basename(path)))
        return {"exception": type(e).__module__ + "." + type(e).__name__, "message": msg}
    return None


FOLDER_CLASSES = ("n01440764", "n01443537")


def codec_fixtures(out, photos):
    fdir = os.path.join(out, "files")
    if os.path.isdir(fdir):
        shutil.rmtree(fdir)
    os.makedirs(fdir)
    ast = photos["astronaut"]
    base = ast.resize((40, 28), Image.Resampling.LANCZOS, box=(0, 100, 512, 458))  # 40x28 RGB crop of the photo
    base_u8 = u8(base)
    grey = base.convert("L")
    H, W = base_u8.shape[:2]
    files = {}  # name -> dict(kind, note)

    def jpg(im, name, **kw):
        im.save(os.path.join(fdir, name), "JPEG", **kw)
        files[name] = {k: v for k, v in kw.items()}

    jpg(base, "rgb.jpg", quality=90, subsampling="4:2:0", progressive=False, optimize=False)
    jpg(grey, "grey.jpg", quality=90, progressive=False, optimize=False)
    jpg(base, "rgb_progressive.jpg", quality=90, subsampling="4:2:0", progressive=True, optimize=False)
    jpg(base, "rgb_444.jpg", quality=90, subsampling="4:4:4", progressive=False, optimize=False)
    # CMYK with real black separation: k = 255 - max(r,g,b), c = max - r, ... (Pillow writes it Adobe-inverted)
    mx = base_u8.max(axis=2, keepdims=True)
    cmyk = np.concatenate([mx - base_u8, 255 - mx], axis=2).astype(np.uint8)
    cmyk_im = Image.frombytes("CMYK", (W, H), cmyk.tobytes())
    jpg(cmyk_im, "cmyk.jpg", quality=90, progressive=False, optimize=False)

    def png(im, name):
        im.save(os.path.join(fdir, name), "PNG")
        files[name] = {"pillow_mode": im.mode}

    png(base, "rgb.png")
    alpha = np.tile(np.round(np.linspace(0, 255, W)).astype(np.uint8)[None, :], (H, 1))
    alpha[: H // 4] = 255
    rgba_u8 = np.concatenate([base_u8, alpha[..., None]], axis=2)
    png(Image.frombytes("RGBA", (W, H), rgba_u8.tobytes()), "rgba.png")
    png(grey, "grey.png")
    png(base.quantize(colors=16), "palette.png")
    # 16-bit grey: top half = g*257 (a true 16-bit rendering), bottom half = g (values 0..255 stored in 16 bits)
    g = u8(grey).astype(np.uint16)
    g16 = np.where(np.arange(H)[:, None] < H // 2, g * 257, g).astype(np.uint16)
    Image.frombytes("I;16", (W, H), g16.astype("<u2").tobytes()).save(os.path.join(fdir, "grey16.png"), "PNG")
    files["grey16.png"] = {"pillow_mode": "I;16"}
    # 16-bit RGB: high byte = the 8-bit photo, low byte a fixed pattern (so MSB-truncation and rounding differ)
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    low = ((xx * 37 + yy * 91)[..., None] + np.array([0, 85, 170])) % 256
    rgb16 = (base_u8.astype(np.uint16) << 8) | low.astype(np.uint16)
    write_png_rgb16(os.path.join(fdir, "rgb16.png"), rgb16)
    files["rgb16.png"] = {"writer": "hand-written (zlib level 9, filter 0)"}
    shutil.copyfile(os.path.join(fdir, "rgb.png"), os.path.join(fdir, "png_disguised.jpg"))
    files["png_disguised.jpg"] = {"note": "byte copy of rgb.png"}
    data = open(os.path.join(fdir, "rgb.jpg"), "rb").read()
    open(os.path.join(fdir, "truncated.jpg"), "wb").write(data[: len(data) // 2])
    files["truncated.jpg"] = {"note": f"first {len(data) // 2} of {len(data)} bytes of rgb.jpg"}
    garbage = np.random.RandomState(1234).randint(0, 256, 512).astype(np.uint8).tobytes()
    open(os.path.join(fdir, "garbage.jpg"), "wb").write(garbage)
    files["garbage.jpg"] = {"note": "512 bytes of np.random.RandomState(1234).randint(0,256)"}
    open(os.path.join(fdir, "empty.png"), "wb").close()
    files["empty.png"] = {"note": "0 bytes"}

    # tiny ImageFolder tree
    chel = photos["chelsea"]
    tdir = os.path.join(fdir, "tiny_folder")
    folder = [
        (FOLDER_CLASSES[0], "a.JPEG", chel.resize((12, 10), Image.Resampling.LANCZOS, box=(100, 20, 340, 220)), "JPEG"),
        (FOLDER_CLASSES[0], "b.jpg", ast.resize((8, 8), Image.Resampling.LANCZOS, box=(150, 40, 300, 190)).convert("L"),
         "JPEG"),
        (FOLDER_CLASSES[0], "c.png", chel.resize((16, 16), Image.Resampling.LANCZOS, box=(200, 100, 300, 200)), "PNG"),
        (FOLDER_CLASSES[1], "d.jpg", ast.resize((10, 14), Image.Resampling.LANCZOS, box=(0, 0, 200, 280)), "JPEG"),
        (FOLDER_CLASSES[1], "e.png", ast.resize((16, 12), Image.Resampling.LANCZOS, box=(250, 300, 450, 450)), "PNG"),
        (FOLDER_CLASSES[1], "f.JPEG", chel.resize((9, 11), Image.Resampling.LANCZOS, box=(300, 50, 390, 160)), "JPEG"),
    ]
    for cls, name, im, fmt in folder:
        os.makedirs(os.path.join(tdir, cls), exist_ok=True)
        kw = dict(quality=90, subsampling="4:2:0") if fmt == "JPEG" and im.mode == "RGB" else (
            dict(quality=90) if fmt == "JPEG" else {})
        im.save(os.path.join(tdir, cls, name), fmt, **kw)
    open(os.path.join(tdir, FOLDER_CLASSES[1], "corrupt.jpg"), "wb").write(
        np.random.RandomState(99).randint(0, 256, 200).astype(np.uint8).tobytes())
    open(os.path.join(tdir, FOLDER_CLASSES[1], "notes.txt"), "w").write("not an image; skipped by ImageFolder\n")

    # ---- decode everything with Pillow, verify against what was encoded / the documented conversions
    tensors, info = {}, {}
    valid = ["rgb.jpg", "grey.jpg", "rgb_progressive.jpg", "rgb_444.jpg", "cmyk.jpg", "rgb.png", "rgba.png",
             "grey.png", "palette.png", "grey16.png", "rgb16.png", "png_disguised.jpg"]
    for name in valid:
        p = os.path.join(fdir, name)
        with Image.open(p) as im:
            mode, fmt, size = im.mode, im.format, im.size
            raw = np.asarray(im).copy()
            rgb = u8(im.convert("RGB"))
        key = name.replace(".", "_")
        tensors[key] = torch.from_numpy(rgb)
        info[name] = {"pillow_format": fmt, "pillow_mode": mode, "size_wh": list(size), "bytes": os.path.getsize(p),
                      "sha256": sha256_file(p), "key": key, **files[name]}
        if name in ("rgb.png", "png_disguised.jpg", "rgba.png"):
            assert_equal(name, rgb, base_u8)  # lossless; RGBA -> RGB drops alpha (no compositing)
        if name == "rgba.png":
            assert_equal("rgba alpha", raw[..., 3], alpha)
        if name == "grey.png":
            assert_equal(name, rgb, np.repeat(u8(grey)[..., None], 3, axis=2))
        if name == "palette.png":
            with Image.open(p) as im:
                pal = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
                idx = np.asarray(im)
            assert_equal(name, rgb, pal[idx])
        if name == "grey16.png":
            assert mode == "I;16", mode
            assert_equal("grey16 raw", raw, g16)
            assert_equal(name, rgb, np.repeat(np.minimum(g16, 255).astype(np.uint8)[..., None], 3, axis=2))
            tensors["grey16_png_raw"] = torch.from_numpy(raw.astype(np.int64))
        if name == "rgb16.png":
            assert mode == "RGB", mode
            assert_equal(name, rgb, (rgb16 >> 8).astype(np.uint8))
        if name == "grey.jpg":
            assert mode == "L" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        if name == "cmyk.jpg":
            assert mode == "CMYK", mode
            # Pillow's CMYK -> RGB (Convert.c cmyk2rgb) on the CMYK values Pillow reports (= 255 - libjpeg output)
            c = raw.astype(np.int64)
            nk = 255 - c[..., 3:4]
            tmp = c[..., :3] * nk + 128
            want = np.clip(nk - (((tmp >> 8) + tmp) >> 8), 0, 255).astype(np.uint8)
            assert_equal("cmyk2rgb", rgb, want)
    for name in ("truncated.jpg", "garbage.jpg", "empty.png"):
        err = pillow_error(os.path.join(fdir, name))
        assert err is not None, name
        info[name] = {"bytes": os.path.getsize(os.path.join(fdir, name)), "pillow_error": err, **files[name]}

    # folder: torchvision ImageFolder's view of the tree, and every valid image decoded
    ds = torchvision.datasets.ImageFolder(tdir)
    samples = [[os.path.relpath(p, tdir), c] for p, c in ds.samples]
    folder_info = {"classes": ds.classes, "class_to_idx": ds.class_to_idx, "samples": samples, "images": {}}
    for rel, cls in samples:
        p = os.path.join(tdir, rel)
        err = pillow_error(p)
        if err is not None:
            folder_info["images"][rel] = {"pillow_error": err}
            continue
        with Image.open(p) as im:
            mode, size = im.mode, im.size
            rgb = u8(im.convert("RGB"))
        key = "tiny_" + rel.replace("/", "_").replace(".", "_")
        tensors[key] = torch.from_numpy(rgb)
        folder_info["images"][rel] = {"pillow_mode": mode, "size_wh": list(size), "key": key}
    meta = {
        "source": "files/rgb* = skimage astronaut.png (PIL RGB) .resize((40,28), LANCZOS, box=(0,100,512,458)); "
                  "grey = .convert('L'); tiny_folder/* = other LANCZOS crops of astronaut.png / chelsea.png",
        "decode": "PIL Image.open(path).convert('RGB') -> U8 [H,W,3]; keys = file name with '.' -> '_'",
        "files": dumps(info),
        "image_folder": dumps(folder_info),
    }
    return tensors, meta, base_u8


# ----------------------------------------------------------------------------------------------- 2. transforms

RRC_BOXES = [(0, 0, 45, 60), (6, 9, 30, 37), (20, 31, 17, 13)]  # (top, left, height, width) in the 60x45 source


def transforms_fixtures(photos):
    src_im = photos["chelsea"].resize((60, 45), Image.Resampling.LANCZOS, box=(0, 0, 400, 300))
    src = u8(src_im)
    outs, box_diffs = [], []
    for (t, l, h, w) in RRC_BOXES:
        o = u8(TF.resized_crop(src_im, t, l, h, w, [24, 24], T.InterpolationMode.BICUBIC))
        assert_equal(f"rrc box {(t, l, h, w)}", o, emu_resize(src[t:t + h, l:l + w], (24, 24)))
        outs.append(o)
        # Image.resize(box=...) on the *uncropped* image may use source pixels just outside the box
        ob = u8(src_im.resize((24, 24), BICUBIC, box=(l, t, l + w, t + h)))
        assert_equal(f"resize box {(t, l, h, w)}", ob, emu_resize(src, (24, 24), box=(l, t, l + w, t + h)))
        box_diffs.append(int(np.abs(ob.astype(int) - o.astype(int)).max()))
    rrc_out = np.stack(outs)
    flip = u8(TF.hflip(Image.fromarray(rrc_out[0])))
    assert_equal("hflip", flip, rrc_out[0][:, ::-1])

    def eval_tf(resize, crop):
        tf = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop)])
        out = u8(tf(src_im))
        H, W = src.shape[:2]
        nh, nw = (resize, int(resize * W / H)) if H <= W else (int(resize * H / W), resize)
        resized = emu_resize(src, (nw, nh))
        top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
        assert_equal(f"eval {resize}/{crop}", out, resized[top:top + crop, left:left + crop])
        return out, resized, (nh, nw, top, left)

    eval_out, eval_resized, eval_geom = eval_tf(32, 28)
    eval2_out, _, eval2_geom = eval_tf(31, 28)
    assert eval2_geom == (31, 41, 2, 6), eval2_geom  # round(1.5) = 2, round(6.5) = 6 (round half to even)

    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(Image.fromarray(rrc_out[0])))
    x = torch.from_numpy(rrc_out[0]).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.equal(norm, x)

    # RandomResizedCrop.get_params: the deterministic fallback (all 10 attempts fail), and seeded draws
    fallback = []
    for (hh, ww) in ((10, 400), (400, 10), (9, 101)):
        torch.manual_seed(0)
        i, j, h, w = T.RandomResizedCrop.get_params(Image.new("RGB", (ww, hh)), [0.2, 1.0], [3 / 4, 4 / 3])
        fallback.append([hh, ww, i, j, h, w])
    torch.manual_seed(0)
    seeded = [list(T.RandomResizedCrop.get_params(src_im, [0.2, 1.0], [3 / 4, 4 / 3])) for _ in range(8)]
    tensors = dict(src=torch.from_numpy(src), rrc_boxes=torch.tensor(RRC_BOXES, dtype=torch.int64),
                   rrc_out=torch.from_numpy(rrc_out), rrc_flip0=torch.from_numpy(flip),
                   eval_resized=torch.from_numpy(eval_resized), eval_out=torch.from_numpy(eval_out),
                   eval2_out=torch.from_numpy(eval2_out), rrc_norm0=norm.contiguous(),
                   rrc_fallback=torch.tensor(fallback, dtype=torch.int64),
                   rrc_params_seed0=torch.tensor(seeded, dtype=torch.int64))
    meta = {
        "source": "src = skimage chelsea.png (PIL RGB) .resize((60,45), LANCZOS, box=(0,0,400,300)), U8 [45,60,3]",
        "rrc": "rrc_out[k] = torchvision.transforms.functional.resized_crop(PIL(src), top, left, h, w, [24,24], "
               "BICUBIC) for rrc_boxes[k] = (top, left, h, w) = PIL img.crop((left, top, left+w, top+h))"
               ".resize((24,24), BICUBIC); rrc_flip0 = hflip(rrc_out[0])",
        "resize_box_vs_crop_maxdiff": dumps(box_diffs),
        "eval": f"eval_out = CenterCrop(28)(Resize(32, BICUBIC)(PIL(src))): resized (h,w) = {eval_geom[:2]}, "
                f"crop top/left = {eval_geom[2:]}; eval_resized = the Resize output; eval2_out = CenterCrop(28)("
                f"Resize(31)): resized {eval2_geom[:2]}, crop top/left {eval2_geom[2:]} (Python round half to even)",
        "normalize": "rrc_norm0 = Normalize(ImageNet mean/std)(ToTensor()(PIL(rrc_out[0]))) float32 [3,24,24]",
        "get_params": "rrc_fallback rows = (H, W, i, j, h, w) from RandomResizedCrop.get_params(HxW image, "
                      "scale (0.2,1), ratio (3/4,4/3)) where all 10 attempts fail; rrc_params_seed0 = 8 successive "
                      "get_params(src, (0.2,1), (3/4,4/3)) rows (i, j, h, w) after torch.manual_seed(0)",
    }
    return tensors, meta


# ----------------------------------------------------------------------------------------------- 3. RandAugment

RA_CONFIG = "rand-m9-mstd0.5-inc1"
SIGNED = {"Rotate", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
          "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
NO_MAGNITUDE = {"AutoContrast", "Equalize", "Invert"}
MAGNITUDES = (0.0, 4.5, 9.0, 10.0)
TRIAL_SEEDS = tuple(range(8))


def posterize_legacy(img, bits_to_keep, **__):
    """timm's posterize with the pre-Pillow-13 ImageOps.posterize (bits = 0 gives an all-zero image; Pillow 13.0
    raises ValueError('bits must be between or equal to 1 and 8'))."""
    if bits_to_keep >= 8:
        return img
    mask = ~(2 ** (8 - bits_to_keep) - 1)
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


def fixed_args(op, magnitude, sign):
    saved = aa._randomly_negate
    aa._randomly_negate = (lambda v: v) if sign > 0 else (lambda v: -v)
    try:
        return tuple(op.level_fn(magnitude, op.hparams)) if op.level_fn is not None else ()
    finally:
        aa._randomly_negate = saved


def apply_fixed(op, img_im, magnitude, sign):
    """AugmentOp.__call__ with prob 1, no magnitude noise and a fixed sign (through timm's own code)."""
    fixed = aa.AugmentOp(op.name, prob=1.0, magnitude=magnitude, hparams={**op.hparams, "magnitude_std": 0})
    saved = aa._randomly_negate
    aa._randomly_negate = (lambda v: v) if sign > 0 else (lambda v: -v)
    try:
        return u8(fixed(img_im)), None
    except ValueError as e:
        return None, str(e)
    finally:
        aa._randomly_negate = saved


def randaugment_fixtures(photos):
    img_im = photos["chelsea"].resize((32, 32), Image.Resampling.LANCZOS, box=(130, 30, 330, 230))
    img = u8(img_im)
    # the transform MAE/MILAN finetuning builds (util/datasets.py::build_transform -> timm create_transform)
    tf = create_transform(224, is_training=True, auto_augment=RA_CONFIG, interpolation="bicubic", re_prob=0.25,
                          re_mode="pixel", re_count=1, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    ras = [t for t in tf.transforms if isinstance(t, aa.RandAugment)]
    assert len(ras) == 1, tf
    ra = ras[0]
    names = [o.name for o in ra.ops]
    assert names == aa._RAND_INCREASING_TRANSFORMS, names
    assert ra.num_layers == 2 and ra.choice_weights is None
    hp = ra.ops[0].hparams
    kw = ra.ops[0].kwargs
    assert all(o.prob == 0.5 and o.magnitude == 9 and o.magnitude_std == 0.5 and o.magnitude_max is None
               for o in ra.ops)
    fill = tuple(kw["fillcolor"])
    assert fill == (124, 116, 104) and kw["resample"] == BICUBIC, kw
    assert "translate_pct" not in hp  # -> the default 0.45 in _translate_rel_level_to_arg

    tensors = {"img": torch.from_numpy(img)}
    ops_meta = {}
    for op in ra.ops:
        name = op.name
        mags = (None,) if name in NO_MAGNITUDE else MAGNITUDES
        for m in mags:
            for sign in ((1, -1) if name in SIGNED else (1,)):
                mm = 9.0 if m is None else m
                args = fixed_args(op, mm, sign)
                key = f"op_{name}" if m is None else f"op_{name}_m{m:g}"
                if name in SIGNED:
                    key += "_pos" if sign > 0 else "_neg"
                out, err = apply_fixed(op, img_im, mm, sign)
                emu = emu_op(name, img, args, fill)
                entry = {"name": name, "args": list(args)}
                if m is not None:
                    entry["magnitude"] = m
                if name in SIGNED:
                    entry["sign"] = "+" if sign > 0 else "-"
                mat = affine_matrix(name, args, 32, 32)
                if mat is not None:
                    entry["affine_matrix"] = [float(v) for v in mat]
                if err is not None:
                    assert name == "PosterizeIncreasing" and args == (0,), (key, err)
                    entry["pillow13_error"] = "ValueError: " + err
                    out = u8(posterize_legacy(img_im, 0))
                assert_equal(key, out, emu)
                if name in SIGNED and m == 0.0:
                    assert_equal(key + " is identity", out, img)
                    continue  # identity for every signed op: not stored
                tensors[key] = torch.from_numpy(out)
                ops_meta[key] = entry

    # whole RandAugment calls, seeded; the draws are replayed by hand to check the documented draw order
    for op in ra.ops:
        if op.name == "PosterizeIncreasing":
            op.aug_fn = posterize_legacy
    trial_outs, trials = [], []
    for seed in TRIAL_SEEDS:
        random.seed(seed)
        np.random.seed(seed)
        out = u8(ra(img_im))
        random.seed(seed)
        np.random.seed(seed)
        idx = np.random.randint(0, len(ra.ops), size=ra.num_layers)
        cur, draws = img, []
        for i in idx:
            op = ra.ops[int(i)]
            applied = not (random.random() > op.prob)
            d = {"op": op.name, "index": int(i), "applied": applied}
            if applied:
                m = max(0.0, min(random.gauss(op.magnitude, op.magnitude_std), 10.0))
                d["magnitude"] = m
                if op.name in NO_MAGNITUDE:
                    args = ()
                elif op.name in SIGNED:
                    sign = -1 if random.random() > 0.5 else 1
                    d["sign"] = "+" if sign > 0 else "-"
                    args = fixed_args(op, m, sign)
                else:
                    args = fixed_args(op, m, 1)
                d["args"] = list(args)
                cur = emu_op(op.name, cur, args, fill)
            draws.append(d)
        assert_equal(f"RandAugment seed {seed}", out, cur)
        trial_outs.append(out)
        trials.append({"seed": seed, "ops": draws})
    tensors["trial_out"] = torch.from_numpy(np.stack(trial_outs))
    hp_meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items() if k != "interpolation"}
    hp_meta["interpolation"] = "BICUBIC"
    meta = {
        "source": "img = skimage chelsea.png (PIL RGB) .resize((32,32), LANCZOS, box=(130,30,330,230)), U8 [32,32,3]",
        "config": RA_CONFIG,
        "hparams": dumps(hp_meta),
        "op_kwargs": dumps({"fillcolor": list(fill), "resample": "BICUBIC"}),
        "ops": dumps(ops_meta),
        "trials": dumps(trials),
        "trial_rng": "trial_out[k]: random.seed(s); np.random.seed(s); RandAugment(PIL(img)) for s = trials[k].seed "
                     "(timm 1.0.31 create_transform(224, is_training=True, auto_augment='" + RA_CONFIG + "', "
                     "interpolation='bicubic'), PosterizeIncreasing patched to the pre-Pillow-13 bits=0 behaviour)",
    }
    return tensors, meta


# ----------------------------------------------------------------------------------------------- system codec check

C_CHECK = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <jpeglib.h>
#include <png.h>
#define STR2(x) #x
#define STR(x) STR2(x)
struct err { struct jpeg_error_mgr pub; jmp_buf jb; };
static void on_error(j_common_ptr c) { char m[JMSG_LENGTH_MAX]; (*c->err->format_message)(c, m);
  fprintf(stderr, "%s\n", m); longjmp(((struct err *)c->err)->jb, 1); }
static int do_jpeg(const char *path) {
  FILE *f = fopen(path, "rb"); if (!f) return 3;
  struct jpeg_decompress_struct ci; struct err je; ci.err = jpeg_std_error(&je.pub); je.pub.error_exit = on_error;
  if (setjmp(je.jb)) { jpeg_destroy_decompress(&ci); fclose(f); return 2; }
  jpeg_create_decompress(&ci); jpeg_stdio_src(&ci, f); jpeg_read_header(&ci, TRUE);
  jpeg_start_decompress(&ci);  /* library defaults: JDCT_ISLOW, fancy upsampling, YCbCr->RGB */
  int rs = ci.output_width * ci.output_components; unsigned char *row = malloc(rs);
  printf("%u %u %d %d\n", ci.output_width, ci.output_height, ci.output_components, ci.saw_Adobe_marker);
  while (ci.output_scanline < ci.output_height) { jpeg_read_scanlines(&ci, &row, 1); fwrite(row, 1, rs, stdout); }
  jpeg_finish_decompress(&ci); jpeg_destroy_decompress(&ci); fclose(f); free(row);
  if (je.pub.num_warnings) { fprintf(stderr, "%ld libjpeg warnings\n", je.pub.num_warnings); return 4; }
  return 0;
}
static int do_png(const char *path) {
  FILE *f = fopen(path, "rb"); if (!f) return 3;
  png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop i = png_create_info_struct(p);
  if (setjmp(png_jmpbuf(p))) { png_destroy_read_struct(&p, &i, NULL); fclose(f); return 2; }
  png_init_io(p, f); png_read_info(p, i);
  int ct = png_get_color_type(p, i), bd = png_get_bit_depth(p, i);
  if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(p);
  if (ct == PNG_COLOR_TYPE_GRAY && bd < 8) png_set_expand_gray_1_2_4_to_8(p);
  if (bd == 16) png_set_strip_16(p);
  if (ct & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(p);
  if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(p);
  png_read_update_info(p, i);
  unsigned w = png_get_image_width(p, i), h = png_get_image_height(p, i); size_t rs = png_get_rowbytes(p, i);
  unsigned char *img = malloc(rs * h); png_bytep *rows = malloc(sizeof(png_bytep) * h);
  for (unsigned y = 0; y < h; y++) rows[y] = img + y * rs;
  png_read_image(p, rows); png_read_end(p, NULL);
  printf("%u %u %d 0\n", w, h, (int)(rs / w)); fwrite(img, 1, rs * h, stdout);
  png_destroy_read_struct(&p, &i, NULL); fclose(f); free(img); free(rows); return 0;
}
int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "version")) {
    printf("libjpeg-turbo %s (JPEG_LIB_VERSION %d), libpng %s\n", STR(LIBJPEG_TURBO_VERSION), JPEG_LIB_VERSION,
           png_get_libpng_ver(NULL)); return 0; }
  return !strcmp(argv[1], "jpeg") ? do_jpeg(argv[2]) : do_png(argv[2]);
}
"""


def system_codec_check(out, cache):
    """Decodes every fixture file (and three full-size skimage JPEGs) with the system libjpeg/libpng and compares
    with Pillow. Printed only."""
    if shutil.which("gcc") is None or not os.path.exists("/usr/include/jpeglib.h") or \
            not os.path.exists("/usr/include/png.h"):
        print("system codec check skipped (needs gcc, libjpeg62-turbo-dev, libpng-dev)", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as td:
        src, exe = os.path.join(td, "check.c"), os.path.join(td, "check")
        open(src, "w").write(C_CHECK)
        subprocess.run(["gcc", "-O1", "-o", exe, src, "-ljpeg", "-lpng"], check=True)
        version = subprocess.run([exe, "version"], check=True, capture_output=True, text=True).stdout.strip()
        print(f"system codecs: {version}; Pillow {PIL.__version__} uses libjpeg-turbo "
              f"{features.version('libjpeg_turbo')}, zlib {features.version('zlib')}", file=sys.stderr)
        fdir = os.path.join(out, "files")
        paths = sorted(glob.glob(os.path.join(fdir, "*"))) + sorted(glob.glob(os.path.join(fdir, "tiny_folder/*/*")))
        for member in ("rocket.jpg", "retina.jpg", "hubble_deep_field.jpg"):
            try:
                paths.append(skimage_file(cache, "skimage/data/" + member))
            except Exception as e:  # noqa: BLE001
                print(f"  (skipping {member}: {e})", file=sys.stderr)
        for p in paths:
            if os.path.isdir(p) or p.endswith(".txt"):
                continue
            head = open(p, "rb").read(8)
            kind = "png" if head.startswith(b"\x89PNG") else "jpeg"
            r = subprocess.run([exe, kind, p], capture_output=True)
            rel = os.path.relpath(p, fdir) if p.startswith(fdir) else os.path.basename(p)
            pil_err = pillow_error(p)
            if r.returncode not in (0, 4):
                print(f"  {rel:28s} system {kind}: error rc={r.returncode} ({r.stderr.decode().strip()}); "
                      f"Pillow: {pil_err and pil_err['exception']}", file=sys.stderr)
                continue
            nl = r.stdout.index(b"\n")
            w, h, c, _adobe = [int(v) for v in r.stdout[:nl].split()]
            sys_arr = np.frombuffer(r.stdout[nl + 1:], np.uint8).reshape(h, w, c)
            warn = f" (libjpeg warning: {r.stderr.decode().strip()})" if r.returncode == 4 else ""
            if pil_err is not None:
                print(f"  {rel:28s} system {kind}: decoded{warn}; Pillow: {pil_err['exception']}", file=sys.stderr)
                continue
            with Image.open(p) as im:
                mode = im.mode
                raw = np.asarray(im) if mode in ("L", "RGB", "CMYK") else None
                rgb = u8(im.convert("RGB"))
            if kind == "jpeg" and mode == "CMYK":
                cmp = ("CMYK (Pillow = 255 - libjpeg)", raw, 255 - sys_arr)
            elif kind == "jpeg" and mode == "L":
                cmp = ("L", raw, sys_arr[..., 0])
            else:
                cmp = ("RGB", rgb, sys_arr)
            d = np.abs(cmp[1].astype(int) - cmp[2].astype(int))
            status = "identical" if d.max() == 0 else f"DIFFERS ({int((d > 0).sum())} values, max {int(d.max())})"
            print(f"  {rel:28s} {kind} {mode:5s} {w}x{h} vs Pillow {cmp[0]}: {status}{warn}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- main

def write(path, tensors, meta, listing):
    metadata = {**base_metadata(), **meta}
    for name, t in tensors.items():
        assert t.dtype in (torch.uint8, torch.int64, torch.float32), (name, t.dtype)
        tensors[name] = t.contiguous()
    save_file(tensors, path, metadata=metadata)
    canonicalize_header(path, metadata)
    if listing:
        for name, t in tensors.items():
            print(f"  {name:34s} {str(t.dtype):14s} {list(t.shape)}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="download cache for the photos (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="print each written tensor's name, dtype and shape")
    ap.add_argument("--no-system-check", action="store_true", help="skip the libjpeg/libpng comparison")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    photos, shas = load_photos(args.cache)
    photo_meta = {"photos": dumps({k: f"skimage/data/{k}.png (PyPI {SKIMAGE_WHEEL}), sha256 {v}"
                                   for k, v in shas.items()})}

    t, m, _ = codec_fixtures(args.out, photos)
    write(os.path.join(args.out, "decoded.safetensors"), t, {**m, **photo_meta}, args.list)
    t, m = transforms_fixtures(photos)
    write(os.path.join(args.out, "transforms.safetensors"), t, {**m, **photo_meta}, args.list)
    t, m = randaugment_fixtures(photos)
    write(os.path.join(args.out, "randaugment.safetensors"), t, {**m, **photo_meta}, args.list)

    total = 0
    for root, _, names in sorted(os.walk(args.out)):
        for n in sorted(names):
            p = os.path.join(root, n)
            size = os.path.getsize(p)
            total += size
            assert size < MAX_FILE, (p, size)
            print(f"{sha256_file(p)}  {size:7d}  {os.path.relpath(p, REPO)}", file=sys.stderr)
    assert total < MAX_TOTAL, total
    print(f"total {total} bytes", file=sys.stderr)
    if not args.no_system_check:
        system_codec_check(args.out, args.cache)


if __name__ == "__main__":
    main()
