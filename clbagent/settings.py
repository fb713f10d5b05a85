"""Agent settings: every value where the CLB documents disagree is a setting with a default.

The conflict register of the requirements (C1-C32) lists values that differ between pages of the
documentation; clbagent does not hard-code one of them, it reads them from here (R160).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

RESERVED_PORTS = (843, 1020, 1433, 1434, 3306, 3389, 6006, 20000, 36000, 42222, 48369, 56000, 65010)


class Settings(BaseModel):
    """Tunable limits and defaults. Each field names the conflict it settles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain_max_length: int = Field(120, ge=1, le=255, description="C1: 120 (console) or 80 (strict API)")
    url_max_length: int = Field(120, ge=1, le=200, description="C2: 120 (console), 80 (V2) or 200 (V3)")
    health_domain_max_length: int = Field(120, ge=1, le=255, description="C3: 80 or 120")
    health_path_max_length: int = Field(120, ge=1, le=200, description="C4: 80, 120 or 200")
    domain_allow_underscore: bool = Field(True, description="C7: T1419 allows '_' in domains")
    health_check_method: Literal["GET", "HEAD"] = Field("GET", description="C10: GET (console) or HEAD")
    health_check_http_code: int = Field(31, ge=1, le=31, description="C17: 31 (API) or 15 (console)")
    reserved_ports: tuple[int, ...] = Field(RESERVED_PORTS, description="V-2.3 / C31")
    reject_reserved_ports: bool = True
    require_default_server: bool = Field(True, description="C32: switch on needs exactly one default")
    redirects_on_internal: bool = Field(True, description="C25: the matrix says public only")
    max_listeners: int = Field(50, ge=1)
    max_l7_rules: int = Field(50, ge=1)
    max_targets_per_rule: int = Field(100, ge=1)
    max_customized_configs: int = Field(200, ge=1, description="C13: 200 or 100")
    cert_expiry_warning_days: int = Field(30, ge=0)

    @classmethod
    def load(cls, path: Path | None) -> Settings:
        """Read settings from a YAML file; a missing path means the documented defaults."""
        if path is None:
            return cls()
        data = yaml.safe_load(path.read_text()) or {}
        return cls.model_validate(data)


DEFAULT_SETTINGS = Settings()
