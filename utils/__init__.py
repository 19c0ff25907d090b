"""Errors and atomic writes: imported by every layer, importing none of them."""
