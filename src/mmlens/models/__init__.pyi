"""Type stub of the lazy front door of ``mmlens.models``: every public name, explicitly (IDEs and type checkers
read it; ``lazy_loader`` loads the submodule of a name on first use)."""

from .contrastive import (
    ContrastiveModel as ContrastiveModel,
)
from .contrastive import (
    LossKind as LossKind,
)
from .contrastive import (
    ParamGroup as ParamGroup,
)
from .contrastive import (
    contrastive_loss as contrastive_loss,
)
from .contrastive import (
    per_pair_loss as per_pair_loss,
)
from .generative import (
    IGNORE_INDEX as IGNORE_INDEX,
)
from .generative import (
    VLM_FAMILIES as VLM_FAMILIES,
)
from .generative import (
    CausalLanguageModel as CausalLanguageModel,
)
from .generative import (
    FamilySpec as FamilySpec,
)
from .generative import (
    PromptStyle as PromptStyle,
)
from .generative import (
    VisionLanguageModel as VisionLanguageModel,
)
from .gguf import (
    load_smollm2 as load_smollm2,
)
from .gguf import (
    plain_copy_of_gguf as plain_copy_of_gguf,
)
from .gguf import (
    save_plain_copy as save_plain_copy,
)
from .gguf import (
    smollm2_gguf_path as smollm2_gguf_path,
)
from .hooks import (
    add_to_output as add_to_output,
)
from .hooks import (
    capture_outputs as capture_outputs,
)
from .loading import (
    load_model as load_model,
)
from .loading import (
    resolve_spec as resolve_spec,
)
from .tiny import (
    TINY_ARCHITECTURES as TINY_ARCHITECTURES,
)
from .tiny import (
    tiny_model as tiny_model,
)
from .tokenizers import (
    make_chat_template as make_chat_template,
)
from .tokenizers import (
    make_llava_processor as make_llava_processor,
)
from .tokenizers import (
    train_word_tokenizer as train_word_tokenizer,
)
