"""The gridmapdir bridge: import leases from, and export them to, LCMAPS.

names.py holds the lease-name encoding, scan.py reads a directory,
importer.py and exporter.py are the two directions.
"""

from poolmgr.gridmapdir.exporter import (
    ExportPlan,
    ExportResult,
    export_gridmapdir,
    plan_export,
    write_gridmapdir,
)
from poolmgr.gridmapdir.importer import (
    Finding,
    ImportPlan,
    PlannedLease,
    apply_import,
    import_gridmapdir,
    plan_import,
)
from poolmgr.gridmapdir.names import (
    DecodedName,
    UnresolvableNameError,
    decode_lease_name,
    encode_lease_name,
    lease_name,
    oneline,
)

__all__ = [
    "DecodedName",
    "ExportPlan",
    "ExportResult",
    "Finding",
    "ImportPlan",
    "PlannedLease",
    "UnresolvableNameError",
    "apply_import",
    "decode_lease_name",
    "encode_lease_name",
    "export_gridmapdir",
    "import_gridmapdir",
    "lease_name",
    "oneline",
    "plan_export",
    "plan_import",
    "write_gridmapdir",
]
