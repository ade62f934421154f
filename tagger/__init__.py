"""DINOv3 ViT-H/16+ booru tagger: model, loader, preprocessing, prediction and formatting.

Data flows one way: decode (``tagger.engine.decode``) → preprocess (``tagger.engine.preprocess``)
→ model (``tagger.engine.model``, weights from ``tagger.engine.weights``) → scores
(``tagger.engine.tagger``) → select / format (``tagger.tags.selection``, ``tagger.tags.formats``) → UI, API or CLI.
"""

from tagger.engine.model import TaggerConfig, TaggerModel
from tagger.engine.tagger import Tagger
from tagger.engine.vocab import CATEGORIES, Category, Vocabulary
from tagger.tags.formats import tag_string
from tagger.tags.selection import Selection, TagScore, select_tags

__all__ = [
    "CATEGORIES",
    "Category",
    "Selection",
    "TagScore",
    "Tagger",
    "TaggerConfig",
    "TaggerModel",
    "Vocabulary",
    "select_tags",
    "tag_string",
]
