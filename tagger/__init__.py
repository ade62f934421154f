"""DINOv3 ViT-H/16+ booru tagger: model, loader, preprocessing, prediction and formatting.

Data flows one way: decode → preprocess (``tagger.preprocess``) → model (``tagger.model``,
weights from ``tagger.weights``) → scores (``tagger.predict``) → select / format
(``tagger.results``) → UI, API or CLI.
"""

from tagger.model import TaggerConfig, TaggerModel
from tagger.predict import Tagger
from tagger.results import Selection, TagScore, select_tags, tag_string
from tagger.vocab import CATEGORIES, Category, Vocabulary

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
