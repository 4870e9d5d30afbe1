"""The compute side: Ray actors that own the face models and the gallery."""
