"""The demo: a bundled sensor model (:mod:`~edgekit.demo.model`) taken the whole way, compile to a simulated
fleet that runs it (:func:`~edgekit.demo.flow.run_demo`, what ``edgekit demo`` and ``make demo`` call). See README.md.
"""

from edgekit.demo.model import demo_model, write_demo_model

__all__ = ["demo_model", "write_demo_model"]
