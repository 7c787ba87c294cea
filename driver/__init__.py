"""The driver layer: long jobs made of library calls (pipeline, experiment, demo, rationale sweeps).

Dependencies point one way: ``pauserec`` (the library) <- ``probes`` <- ``analysis`` <- ``driver``.
Drivers call typed ``run(Args)`` functions of the layers below; nothing below imports a driver.
"""
