"""Fuzz targets of licentia's parsers (atheris; hypothesis in tests/fuzz/). See fuzz/README.md."""
