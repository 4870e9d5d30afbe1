"""The foundation: settings, imaging, faces, decisions, events and audit records.

It knows no infrastructure: nothing here imports Faust, Ray, a Kafka client or Qdrant
(``tests/unit/test_layers.py`` keeps it so). ``actors`` and ``streams`` build on it.
"""
