"""Weight files on disk: safetensors read and write, the exported ``.safetensors`` + JSON sidecar pair, and the
size caps checked before ``torch.load`` reads a published ``.pt`` (tensors only; no code is ever unpickled).

File I/O only: no DeepSpeed, no Ray. :mod:`rayssl.models.convert` maps what these files hold between layouts;
:mod:`rayssl.train.checkpoint` writes and reads the checkpoints of a run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


class FormatError(ValueError):
    """The weights are in no layout rayssl knows, or do not fit the model."""


MAX_WEIGHTS_BYTES = 4 * 2**30
"""The largest weight file rayssl reads, and the most a zip-format file's members may unpack to: 4 GiB holds a
ViT-H (632M float32 parameters, 2.5 GB); rayssl's ViT ``large`` takes 1.6 GB."""

MAX_WEIGHTS_INFLATION = 4
"""How many times its own size (or 16 MiB, if more) a zip-format weight file may unpack to. ``torch.save`` stores
tensors uncompressed and trained weights deflate by a few percent: only a zip bomb unpacks to much more (a 1 MB
``.pt`` holding a deflated 1 GiB tensor, which ``torch.load`` would inflate in full)."""


def check_weights_file(path: str | Path, limit: float | None = None) -> None:
    """Refuse, before ``torch.load`` reads it, a weight file above ``limit`` bytes (:data:`MAX_WEIGHTS_BYTES`), or
    a zip (``torch.save``'s format) whose members unpack to more than ``limit`` or to more than
    :data:`MAX_WEIGHTS_INFLATION` times the file (the sizes its directory declares: what ``torch.load`` allocates).

    Raises:
        FormatError: naming the file and the sizes.
    """
    import zipfile

    limit = MAX_WEIGHTS_BYTES if limit is None else limit
    try:
        size = Path(path).stat().st_size
    except (OSError, TypeError):
        return  # torch.load says why it cannot read it
    if size > limit:
        raise FormatError(f"{path}: {size:,} bytes, above the {limit:,.0f} bytes a weight file may have "
                          "(MAX_WEIGHTS_BYTES)")
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip: torch.load reads what the file holds (or says it cannot)
    allowed = min(limit, max(MAX_WEIGHTS_INFLATION * size, 2**24))
    if unpacked > allowed:
        raise FormatError(f"{path}: refused: its zip members unpack to {unpacked / 2**20:.0f} MiB from a "
                          f"{size / 2**20:.1f} MiB file, more than the {allowed / 2**20:.0f} MiB allowed "
                          f"(MAX_WEIGHTS_INFLATION = {MAX_WEIGHTS_INFLATION}x the file, at most MAX_WEIGHTS_BYTES; "
                          "torch.save does not compress)")


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (no unpickling).

    Raises:
        ValueError: the file is missing, truncated or not safetensors; the message names it.
    """
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises its own error type, without the path
        raise ValueError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, or of a PyTorch file read with ``torch.load(weights_only=True)``
    (a pickle holding anything but tensors and plain containers is refused, never run); nested under
    ``state_dict`` / ``model`` / ``module`` and DDP's ``module.`` prefix unwrapped.

    Raises:
        FormatError: unreadable file, a pickle that is not plain data, no tensors, or a file (or zip members)
            above :func:`check_weights_file`'s caps.
    """
    import pickle

    path = Path(path)
    check_weights_file(path)
    if path.suffix == ".safetensors":
        obj = read_safetensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL (\S+)", str(e))
            if not found:  # damaged or not a pickle at all
                why = next((line.strip() for line in str(e).splitlines() if "WeightsUnpickler error" in line or
                            line.strip().startswith("Unsupported")), str(e).splitlines()[0])
                raise FormatError(f"{path}: not a readable PyTorch or safetensors file ({why})") from None
            raise FormatError(f"{path}: refused: besides tensors it holds {found.group(1)}, "
                              "which unpickling would run; rayssl reads weights with torch.load(weights_only=True) "
                              "(re-save the state dict alone, or as .safetensors)") from None
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise FormatError(f"{path}: not a readable PyTorch or safetensors file ({e})") from None
    return unwrap(obj, str(path))


def unwrap(obj, where: str = "weights") -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` of a checkpoint object (see :func:`read_state_dict`)."""
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "module", "model_state_dict") if k in obj), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise FormatError(f"{where}: expected a state dict (names to tensors), got {type(obj).__name__}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise FormatError(f"{where}: holds no tensors")
    return state


# --------------------------------------------------------------------------- export


def save_export(weights: dict[str, Tensor], meta: dict, path: str | Path) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` and its JSON sidecar ``<path>.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in weights.items()}
    st, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
    save_file(tensors, str(st), metadata={"method": str(meta.get("method", ""))})
    sidecar.write_text(json.dumps(meta, indent=1, sort_keys=True))
    return st, sidecar


def load_export(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read exported weights (``.safetensors``) and their sidecar; ``path`` may omit the suffix."""
    path = Path(path)
    st = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    sidecar = st.with_suffix(".json")
    if not st.is_file():
        raise ValueError(f"exported weights not found: {st}")
    if not sidecar.is_file():
        raise ValueError(f"{st}: missing its JSON sidecar {sidecar.name} (what network the weights are for)")
    try:
        meta = json.loads(sidecar.read_text())
    except ValueError as e:
        raise ValueError(f"{sidecar}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{sidecar}: not valid JSON (nested too deeply)") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{sidecar}: expected a JSON object (what network the weights are for), got "
                         f"{type(meta).__name__}")
    return read_safetensors(st), meta
