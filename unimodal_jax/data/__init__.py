"""Data: the document record format (documents.py) and its ArrayRecord shards, converters from
the formats datasets ship in, task formatting and packing (formatting.py), the grain pipeline
(pipeline.py), in-memory batches (array_batches.py), and the built-in worlds (worlds/)."""
