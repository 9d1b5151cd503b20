"""Building a diffusers ``UNet2DConditionModel`` from a config.

``arch`` is the UNet's diffusers config (enough to count MACs without
weights); ``pretrained`` optionally names a local diffusers directory (a full
pipeline folder with a ``unet`` sub-folder, or the UNet folder itself). Loaded
weights keep diffusers' state-dict keys.
"""
from pathlib import Path
from typing import Optional

from diffusers import UNet2DConditionModel

from alter.registry import MODELS


@MODELS.register_module('DiffusersUNet')
def build_unet(arch: dict, pretrained: Optional[str] = None, subfolder: Optional[str] = 'unet',
               load_weights: bool = True) -> UNet2DConditionModel:
    """A UNet with architecture ``arch``; weights from ``pretrained`` if given.

    Args:
        arch: ``UNet2DConditionModel`` config keys (e.g. SD2.1's).
        pretrained: local diffusers directory, or None for random weights.
        subfolder: sub-folder of ``pretrained`` holding the UNet (None = the folder itself).
        load_weights: False builds ``arch`` with random weights even if
            ``pretrained`` is set (MAC counting, shape checks).
    """
    if pretrained is None or not load_weights:
        return UNet2DConditionModel(**arch)
    root = Path(pretrained).expanduser()
    folder = root / subfolder if subfolder else root
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(
            f'pretrained UNet not found: expected a diffusers UNet folder with config.json at '
            f'{folder} (pretrained={pretrained!r}, subfolder={subfolder!r}). Pass the folder of a '
            'diffusers pipeline saved with save_pretrained, or set subfolder=None if '
            'it is the UNet folder itself.')
    unet = UNet2DConditionModel.from_pretrained(folder, local_files_only=True)
    mismatched = {k: (v, unet.config.get(k)) for k, v in arch.items()
                  if _normalise(unet.config.get(k)) != _normalise(v)}
    if mismatched:
        detail = ', '.join(f'{k}: config {a!r} vs weights {b!r}' for k, (a, b) in mismatched.items())
        raise ValueError(f'the UNet at {folder} does not match the configured architecture '
                         f'({detail}); fix model.unet.arch or point pretrained elsewhere')
    return unet


def _normalise(value):
    return list(value) if isinstance(value, (list, tuple)) else value
