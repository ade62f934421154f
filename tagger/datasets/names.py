"""Caption file names for images: ``CaptionNamer`` keeps them unique in one dataset (the Batch
tab's captions zip, a bulk run's caption files)."""

from __future__ import annotations

from pathlib import PurePosixPath


class CaptionNamer:
    """Caption paths for images, unique within the captions zip.

    kohya/sd-scripts finds an image's caption as ``folder/stem.txt``. Two images with the same
    folder and stem (``a.png`` and ``a.jpg``) cannot both have that name, so: the first one
    in upload order gets ``folder/stem.txt``; each later one gets its full file name plus
    ``.txt`` (``folder/a.jpg.txt``), then ``folder/a.jpg.2.txt``, ... if that is taken too.
    Names are compared ignoring case, because Windows and macOS file systems do.
    ``renamed`` lists ``(image, caption)`` for every image that did not get its stem name.
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self.renamed: list[tuple[str, str]] = []

    def name_for(self, filename: str) -> str:
        path = PurePosixPath(filename)
        candidates = [path.with_suffix(".txt"), path.with_name(path.name + ".txt")]
        for candidate in candidates:
            if self._claim(str(candidate)):
                return self._result(filename, str(candidate), candidates[0])
        number = 2
        while not self._claim(name := str(path.with_name(f"{path.name}.{number}.txt"))):
            number += 1
        return self._result(filename, name, candidates[0])

    def _claim(self, name: str) -> bool:
        key = name.casefold()
        if key in self._taken:
            return False
        self._taken.add(key)
        return True

    def _result(self, filename: str, name: str, preferred: PurePosixPath) -> str:
        if name != str(preferred):
            self.renamed.append((filename, name))
        return name
