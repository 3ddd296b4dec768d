"""Container back ends behind one shape: soft (file), token (PKCS#11), cloud, virtual (TMR).

`ContainerStore` finds the containers of a licentia home and opens them on this machine.
"""

from licentia.containers.store import ContainerStore, Inspection, item_rows

__all__ = ["ContainerStore", "Inspection", "item_rows"]
