"""What the backbone's features show beyond tags: PCA maps, tag relevance heatmaps, similarity."""
