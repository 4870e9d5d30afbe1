"""facestream: streaming face identification (core: settings, decoding, events, CLI)."""
