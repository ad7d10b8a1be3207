"""The text layer of MLLM4WTAL: prompts (eq. 1, 11), the description store and its template
backend, tokenisation and vocabulary, word vectors (eq. 4) and CSR masking (eq. 14-17).

``mllm4wtal.text.bundle`` (imported on its own: it needs torch and the model) turns these
into the tensors training uses.
"""

from mllm4wtal.text.masking import mask_positions, num_to_mask
from mllm4wtal.text.prompts import P_COMPLETE, P_KEY, PROMPTS, format_prompt, humanize
from mllm4wtal.text.store import (
    DescriptionRecord,
    StoreError,
    append_record,
    build_store,
    descriptions_for,
    needed_pairs,
    read_store,
    repair_store,
    template_record,
)
from mllm4wtal.text.templates import template_descriptions
from mllm4wtal.text.vectors import (
    FORMATS,
    embedding_matrix,
    load_vectors,
    oov_vector,
    train_vectors,
)
from mllm4wtal.text.vocab import (
    MASK,
    PAD,
    SPECIALS,
    START,
    UNK,
    Vocabulary,
    is_stopword,
    tokenize,
)

__all__ = [
    "FORMATS", "MASK", "PAD", "P_COMPLETE", "P_KEY", "PROMPTS",
    "SPECIALS", "START", "UNK", "DescriptionRecord", "StoreError", "Vocabulary",
    "append_record", "build_store", "descriptions_for", "embedding_matrix", "format_prompt",
    "humanize", "is_stopword", "load_vectors", "mask_positions",
    "needed_pairs", "num_to_mask", "oov_vector", "read_store", "repair_store",
    "template_descriptions", "template_record", "tokenize", "train_vectors",
]
