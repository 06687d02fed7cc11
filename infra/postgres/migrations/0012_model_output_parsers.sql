-- vLLM's output parsers a model's chats are read with, by the names vLLM's server takes as --tool-call-parser and
-- --reasoning-parser (services/worker/vllm_parsing.py). NULL: ferry reads the format the model's chat template teaches.
ALTER TABLE models
    ADD COLUMN tool_call_parser text CHECK (tool_call_parser ~ '^[a-zA-Z0-9_]+$'),
    ADD COLUMN reasoning_parser text CHECK (reasoning_parser ~ '^[a-zA-Z0-9_]+$');
