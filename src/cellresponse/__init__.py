"""cellresponse: predict which compound treated the cells in a Cell Painting image."""

__version__ = "0.1.0"
