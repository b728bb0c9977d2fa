"""Type stub of the lazy front door of ``mmlens.zoo``."""

from .colour import ColourFinetuneConfig as ColourFinetuneConfig
from .common import (
    mmlens_home as mmlens_home,
)
from .common import (
    zoo_dir as zoo_dir,
)
from .concept_swap import ConceptSwapConfig as ConceptSwapConfig
from .digits_clip import DigitsClipConfig as DigitsClipConfig
from .mini_clip import MiniClipConfig as MiniClipConfig
from .mini_llava import PRIOR_RECIPE as PRIOR_RECIPE
from .mini_llava import MiniLlavaConfig as MiniLlavaConfig
from .registry import (
    DEPENDENCIES as DEPENDENCIES,
)
from .registry import (
    OPT_IN_MODELS as OPT_IN_MODELS,
)
from .registry import (
    ZOO_MODELS as ZOO_MODELS,
)
from .registry import ZooEntry as ZooEntry
from .registry import (
    build as build,
)
from .registry import (
    default_configs as default_configs,
)
from .registry import (
    evaluate as evaluate,
)
from .registry import is_available as is_available
from .registry import (
    is_built as is_built,
)
from .registry import is_shipped as is_shipped
from .registry import (
    list_zoo as list_zoo,
)
from .registry import (
    model_dir as model_dir,
)
from .registry import (
    resolve_model as resolve_model,
)
from .registry import (
    smoke_configs as smoke_configs,
)
from .registry import source_of as source_of
from .registry import (
    world_of as world_of,
)
from .registry import zoo_status as zoo_status
from .shipping import SHIP_EXCLUDE as SHIP_EXCLUDE
from .shipping import SHIPPED_ENV as SHIPPED_ENV
from .shipping import read_manifest as read_manifest
from .shipping import ship as ship
from .shipping import shipped_dir as shipped_dir
from .shipping import shipped_models as shipped_models
from .shipping import verify_shipped as verify_shipped
