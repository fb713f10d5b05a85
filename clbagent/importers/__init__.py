"""Importers: other vendors' listener requests converted into clbagent documents."""
