"""The gallery's errors, apart from its interface so that light readers (``identities list``)
can catch them without loading numpy."""


class GalleryError(RuntimeError):
    pass


class ModelMismatch(GalleryError):
    pass
