"""Tools that turn the public annotation and feature files of real datasets into jvmr TFRecords.

``python -m data_prep.build`` converts once into a folder the training pipeline
reads; ``data_prep.tfds_builders`` exposes the same conversion as TFDS builders.
"""
