"""Letta's semantics over Convoy's records, HTTP aside: which conversation an id names, how messages,
agents and conversations are listed, and whether a model and its settings can be honoured before
anything is stored. Each function takes the stores and the registry it reads; the routes only say
what was asked and frame the answer."""
