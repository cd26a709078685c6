"""Demo backends: a SQLite CRM and a small REST "ERP" over the same data."""
