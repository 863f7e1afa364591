"""All tables under one root, registered in one catalog database."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from cxatlas.core.config import Config
from cxatlas.core.schemas import TableSpec
from cxatlas.warehouse.tables.table import Table, sql_string


@dataclass
class TableStore:
    """All tables under one root, registered in one catalog database."""

    spark: Any
    root: str
    database: str
    target_file_rows: int
    vacuum_retention_hours: float
    conflict_retries: int
    changed_keys_check_min_bytes: int  # read_unique: from this table size on, check only the keys changed since
    _tables: dict = field(default_factory=dict, repr=False)
    _database_ready: bool = field(default=False, repr=False)

    @classmethod
    def from_config(cls, spark, cfg: Config) -> "TableStore":
        t = cfg.settings.tables
        return cls(spark, cfg.table_root, cfg.settings.catalog.database, t.target_file_rows,
                   t.vacuum_retention_hours, t.conflict_retries, t.changed_keys_check_min_bytes)

    def table(self, spec: TableSpec) -> Table:
        if spec.name not in self._tables:
            self._tables[spec.name] = Table(self, spec)
        return self._tables[spec.name]

    def ensure_database(self) -> None:
        if not self._database_ready:
            self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {self.database} COMMENT "
                           f"{sql_string('cxatlas: uploads, annotations and the statistics of Cowen et al. 2021')}")
            self._database_ready = True

    def register_all(self, specs: Sequence[TableSpec]) -> list[str]:
        """Register every existing table in the catalog (tables written before the catalog existed, or moved);
        then ``USE`` the database so bare names resolve too. Returns the registered names."""
        self.ensure_database()
        names = []
        for spec in specs:
            table = self.table(spec)
            if table.exists():
                table.register()
                names.append(table.name)
        self.spark.catalog.setCurrentDatabase(self.database)
        return names
