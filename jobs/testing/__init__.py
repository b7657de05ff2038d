"""Stand-ins for remote services and crash-comparison helpers, shared by tests/ and benchmarks/; the pipeline never
imports them: an OpenAI-compatible endpoint that answers from a function (llm_server), the answer key of the sample
corpus (scripted_model), and what a killed and resumed run is compared by (crashes)."""
