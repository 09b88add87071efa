"""What crosses a process boundary, defined once: each message is one typed (pydantic) model that the writing side
builds and the reading side validates on the way in. Both sides import it from here; neither defines its own copy.

One module per message family (window summaries, deployment parts, the Open Inference Protocol). See
docs/architecture.md.
"""
