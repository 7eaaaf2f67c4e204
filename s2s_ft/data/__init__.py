"""From text to model inputs: reading JSONL and the tokenizer (``reading``), the fine-tuning methods (``methods``: one
object per method), the shared packing layer (``packing``: (source, target) -> ids / positions / segments / attention
mask / labels, the only place the methods differ), token-budget batches (``batching``) and the feature cache
(``cache``). Used by training and decoding alike; depends only on ``model``'s constants."""
