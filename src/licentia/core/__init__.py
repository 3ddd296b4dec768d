"""The license engine, sans I/O: every licensing decision, with the clock as a parameter.

- `evaluate`: may this item be used now, and if not, why;
- `clock`: the container's virtual clock;
- `content`: what an opened container holds;
- `licenses`: vendor-signed licenses bound to one container;
- `updates`: the request / update / receipt cycle;
- `seats`: the seat table (counting modes, quantity, stations, reaping).
"""
