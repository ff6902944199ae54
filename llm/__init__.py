"""Parley's one interface to language models. No other app knows a vendor SDK exists.

    llm.types       ChatRequest, Message, ToolSpec and the stream events (TextDelta, ToolCall,
                    ToolResult, Usage, Finished); llm.errors: the typed errors (LLMError subclasses)
    llm.chat        stream_chat(request, toolset=None) -> ChatStream: retries, fallbacks, tool loop, call log
    llm.registry    model_get(alias), models_all(), models_available(): ModelConfig rows (admin-editable)
    llm.tools       ToolSet, toolset_for_tier(slug), built-ins `calculator` and `current_time`
    llm.tokens      count_text(), count_message(), count_messages(), fit_messages() — offline tiktoken
    llm.providers   the adapters (openai / openai_compatible, anthropic, gemini, demo)
    llm.conf        timeouts, retry and demo settings (PARLEY_LLM_*, PARLEY_DEMO_TOKEN_DELAY)

Commands: `manage.py llm_chat --model ALIAS "prompt"`, `manage.py llm_models`.
"""
