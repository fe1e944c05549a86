"""Preprocessing recipes: the papers' settings as a table (pure Python: the configs validate with it).

* ``ct_btcv``: RAS, 1.5 x 1.5 x 2.0 mm, window -175..250 HU -> [0, 1], crop the foreground (MAE on BTCV).
* ``ct_genesis``: RAS, native spacing, window -1000..1000 HU -> [0, 1], no crop (Models Genesis).
* ``mri_brats``: RAS, 1 mm, per-channel z-normalisation over non-zero voxels (MAE on BraTS).
* ``mri_genesis``: RAS, 1 mm, per-channel 0.5..99.5 percentiles of the non-zero voxels -> [0, 1],
  clipped, background kept at 0 (Models Genesis on MRI: its corruptions and sigmoid output need [0, 1]).
* ``cxr``: grayscale, histogram equalisation, resize to a square, [0, 1] (MAE on ChestX-ray14).
* ``none``: cast to float32 only.

Applying a recipe to a case is :func:`rayssl.data.preprocess.load_case`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """One preprocessing recipe.

    Args:
        name: recipe name.
        spatial_dims: 3 for volumes, 2 for images, 0 for either (``none``).
        spacing: default target spacing in mm (``None`` keeps the native spacing).
        description: one line for docs and logs.
        window: ``(lo, hi)`` intensity window mapped to [0, 1] with clipping, or ``None``.
        orientation: axis codes to reorient to, or ``None``.
        crop_foreground: crop to the bounding box of voxels > 0 after windowing.
        zscore_nonzero: per-channel z-normalisation over non-zero voxels.
        histeq: histogram equalisation (2D).
        percentiles: ``(lo, hi)`` per-channel percentiles of the non-zero voxels mapped to [0, 1] with
            clipping (zero voxels stay 0), or ``None``.
    """

    name: str
    spatial_dims: int
    spacing: tuple[float, ...] | None
    description: str
    window: tuple[float, float] | None = None
    orientation: str | None = None
    crop_foreground: bool = False
    zscore_nonzero: bool = False
    histeq: bool = False
    percentiles: tuple[float, float] | None = None

    @property
    def unit_range(self) -> bool:
        """Whether the output intensities lie in [0, 1] (clipped window, percentile rescale or 2D)."""
        return self.window is not None or self.percentiles is not None or self.histeq

    @property
    def intensity(self) -> str:
        """The intensity scale of its output: ``[0, 1]``, ``z-scores`` or ``raw values`` (the sources of a pool
        must share it)."""
        return "[0, 1]" if self.unit_range else "z-scores" if self.zscore_nonzero else "raw values"


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("ct_btcv", 3, (1.5, 1.5, 2.0), "CT: RAS, 1.5x1.5x2 mm, -175..250 HU -> [0,1], crop foreground",
               window=(-175.0, 250.0), orientation="RAS", crop_foreground=True),
        Recipe("ct_genesis", 3, None, "CT: RAS, native spacing, -1000..1000 HU -> [0,1]",
               window=(-1000.0, 1000.0), orientation="RAS"),
        Recipe("mri_brats", 3, (1.0, 1.0, 1.0), "MRI: RAS, 1 mm, per-channel z-norm over non-zero voxels",
               orientation="RAS", zscore_nonzero=True),
        Recipe("mri_genesis", 3, (1.0, 1.0, 1.0), "MRI: RAS, 1 mm, per-channel 0.5..99.5 pct of non-zero -> [0,1]",
               orientation="RAS", percentiles=(0.5, 99.5)),
        Recipe("cxr", 2, None, "X-ray: grayscale, histogram equalisation, square resize, [0,1]", histeq=True),
        Recipe("none", 0, None, "cast to float32 only"),
    )
}  # fmt: skip


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {list(RECIPES)}")
    return RECIPES[name]


_GENESIS_FORM = {"mri_brats": "mri_genesis"}  # recipes whose intensities leave [0, 1] -> their [0, 1] form


def in_unit_range(name: str) -> bool:
    """Whether recipe ``name`` gives intensities in [0, 1] (what Models Genesis needs)."""
    return get_recipe(name).unit_range


def genesis_recipe(name: str) -> str:
    """The Models Genesis compatible form of recipe ``name``: itself when it already gives [0, 1]
    (``ct_btcv``, ``ct_genesis``, ``cxr``, ``mri_genesis``), ``mri_brats`` -> ``mri_genesis``.

    Raises:
        ValueError: no [0, 1] form is known (``none``).
    """
    if in_unit_range(name):
        return name
    if name in _GENESIS_FORM:
        return _GENESIS_FORM[name]
    ok = [n for n, r in RECIPES.items() if r.unit_range]
    raise ValueError(f"recipe {name!r} has no Models Genesis form with intensities in [0, 1]; use one of {ok}")


def check_genesis_recipe(name: str) -> None:
    """Raise ``ValueError`` unless recipe ``name`` suits ``model.method=genesis`` (intensities in [0, 1]).

    Call it on the resolved recipe before Ray starts (``PretrainConfig`` checks an explicit
    ``data.recipe`` itself; when ``data.recipe`` is ``None`` the source picks the recipe).
    """
    if in_unit_range(name):
        return
    try:
        hint = f"set data.recipe={genesis_recipe(name)}"
    except ValueError:
        hint = "set data.recipe to one of " + ", ".join(n for n, r in RECIPES.items() if r.unit_range)
    raise ValueError(
        f"model.method=genesis needs intensities in [0, 1] (Models Genesis scaling), but data.recipe={name!r} "
        f"does not give them; {hint}"
    )


def hu_to_intensity(name: str, hu: float) -> float:
    """Where ``hu`` lands after recipe ``name``'s intensity window (clipped to [0, 1]).

    Raises:
        ValueError: the recipe has no HU window (MRI, X-ray, ``none``).
    """
    r = get_recipe(name)
    if r.window is None:
        raise ValueError(f"recipe {name!r} has no HU window, so {hu:g} HU has no place on its intensity scale")
    lo, hi = r.window
    return float(min(max((hu - lo) / (hi - lo), 0.0), 1.0))
