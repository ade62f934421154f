"""Caption file names for images: ``CaptionNamer`` keeps them unique in one dataset (the Batch
tab's captions zip, a bulk run's caption files)."""

from __future__ import annotations

import itertools
from pathlib import PurePosixPath


class CaptionNamer:
    """Caption paths for images, unique within the captions zip: kohya/sd-scripts finds an image's
    caption as ``folder/stem.txt``; of images sharing it (``a.png``, ``a.jpg``) the first gets it,
    later ones ``folder/a.jpg.txt``, then ``folder/a.jpg.2.txt``... Names are compared ignoring case,
    as Windows and macOS file systems do. ``renamed`` lists ``(image, caption)`` for every image
    that did not get its stem name."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self.renamed: list[tuple[str, str]] = []

    def name_for(self, filename: str) -> str:
        path = PurePosixPath(filename)
        preferred = str(path.with_suffix(".txt"))
        numbered = (f"{path.name}.{number}.txt" for number in itertools.count(2))
        later = itertools.chain([f"{path.name}.txt"], numbered)  # photo.png: photo.txt, photo.png.txt, photo.png.2.txt…
        candidates = itertools.chain([preferred], (str(path.with_name(name)) for name in later))
        name = next(name for name in candidates if name.casefold() not in self._taken)
        self._taken.add(name.casefold())
        if name != preferred:
            self.renamed.append((filename, name))
        return name
