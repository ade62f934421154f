"""Many images at once: upload intake (files and zip archives, checked before decoding) and
batch captioning shared by the web Batch tab and bulk."""
