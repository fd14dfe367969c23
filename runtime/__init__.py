"""Everything that is neither HTTP nor Ray: settings, schemas, keys, the chunk bus, stores, providers, the step loop."""
