"""The model and everything one image needs on its way to scores: decoding and preprocessing, the
network, its weights, the vocabulary, the Hub download and the ``Tagger`` that runs them."""
