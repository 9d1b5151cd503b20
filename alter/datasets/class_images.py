"""Class-labelled image folders: ImageNet for class-conditional models (DiT)."""
import os
from typing import Any, List, Tuple

from alter.datasets.text_image import CaptionedImageDataset
from alter.registry import DATASETS

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.webp', '.bmp')


@DATASETS.register_module()
class ImageNetFolder(CaptionedImageDataset):
    """An ImageNet-style folder, ``root/<class folder>/<image>``; samples are
    ``dict(image, label, key)``.

    Labels number the class folders in sorted order (the ILSVRC synsets n01440764
    .. n15075141 -> 0..999), as torchvision's ``ImageFolder`` and DiT's training
    script number them, so a pretrained DiT's class ids apply.

    Args:
        root: the folder of class folders (ILSVRC2012's ``train/``).
        **kwargs: ``transform``, ``seed``, ``max_skip_fraction`` of CaptionedImageDataset
            (DiT: ``SDImageTransform(resolution=256, center_crop=True, random_flip=True)``).
    """

    condition_key = 'label'

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not os.path.isdir(root):
            raise FileNotFoundError(f'image folder {root!r} does not exist or is not a folder; '
                                    'expected a folder of class folders (ImageNet train/)')
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.root, self.classes = root, classes
        self._samples: List[Tuple[str, int]] = [
            (os.path.join(name, file), label) for label, name in enumerate(classes)
            for file in sorted(os.listdir(os.path.join(root, name)))
            if file.lower().endswith(IMAGE_EXTENSIONS)]
        self._require_samples(f'{root!r} (class folders holding images)')

    def __len__(self) -> int:
        return len(self._samples)

    def _key(self, index: int) -> str:
        return self._samples[index][0]

    def _read(self, index: int) -> Tuple[str, int]:
        file, label = self._samples[index]
        return os.path.join(self.root, file), label

    def _condition(self, label: int) -> int:
        return label  # numbered from the folders, always valid
