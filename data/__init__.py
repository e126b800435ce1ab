"""Data shipped with the engine (installed as the package `engine_data`): see README.md here."""
