"""Shared helpers for the hand-run reference scripts (tools/*.py, bench/bench_torch.py). Never used by CI.

- `skip_torchvision_fakes()`: the PyPI torchvision wheel (imported by timm and open_clip) is a CUDA build whose
  fake-op registrations fail against the CPU torch; skip them (shared/docs/data-and-weights.md, "PyTorch
  reference"). Call before importing torchvision, timm or open_clip. Idempotent.
- `canonicalize_header(path, metadata_keys)`: safetensors writes __metadata__ from a hash map, so its key order
  changes run to run; rewrite the header with the metadata keys in a fixed order (same length, same tensor bytes) so
  fixture files are byte-reproducible.
- `sha256_file(path)`: hex sha256 of a file (pins external assets; checks byte-identical regeneration).
"""
import json

import torch.library as _L


def skip_torchvision_fakes():
    if getattr(_L, "_milan_patched", False):
        return
    register_fake = _L.register_fake

    def skip(op, func=None, /, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return (lambda f: f) if func is None else func
        return register_fake(op, func, *args, **kwargs)

    _L.register_fake = skip
    _L._milan_patched = True


def canonicalize_header(path, metadata_keys):
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n).decode("utf-8"))
        header["__metadata__"] = {k: header["__metadata__"][k] for k in metadata_keys}
        ordered = {"__metadata__": header.pop("__metadata__")}
        ordered.update(header)  # tensor entries keep safetensors' own (deterministic) order
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert len(text) <= n, (path, len(text), n)
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def sha256_file(path):
    """Hex sha256 of a file's bytes (used to pin external assets and to check byte-identical regeneration)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_fixture(path, tensors, metadata, dtypes, max_bytes, list_width=None, repo=None, finite=True):
    """Writes one fixture file: every tensor detached and contiguous, of an allowed dtype (and finite), saved with
    `metadata`, header canonicalised, size checked. Prints a line (and, with `list_width`, one per tensor) to stderr
    and returns (size, sha256)."""
    import os
    import sys

    import torch
    from safetensors.torch import save_file
    out = {}
    for name, t in tensors.items():
        t = t.detach().contiguous()
        assert t.dtype in dtypes, (path, name, t.dtype)
        if finite:
            assert torch.isfinite(t.double()).all(), (path, name)
        out[name] = t
    save_file(out, path, metadata=metadata)
    canonicalize_header(path, metadata)
    size = os.path.getsize(path)
    assert size < max_bytes, (path, size)
    digest = sha256_file(path)
    shown = os.path.relpath(path, repo) if repo else path
    print(f"wrote {shown} ({len(out)} tensors, {size} bytes, sha256 {digest[:16]})", file=sys.stderr)
    if list_width:
        for name, t in out.items():
            print(f"  {name:{list_width}s} {str(t.dtype):14s} {list(t.shape)}", file=sys.stderr)
    return size, digest
