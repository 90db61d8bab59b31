"""pmg: nightly personalized generative creatives.

Every stage of the nightly flow is a plain function here, callable without Airflow:
extract_clickstream, validate_events, build_histories, extract_keywords, update_preference_tokens,
plan_generation, generate_shard, publish_run. The DAG in dags/ only wires them together.
"""
