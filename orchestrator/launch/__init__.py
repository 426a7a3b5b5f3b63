"""How one trial runs: the launcher decides in-process or a DDP group (launcher.py); the warm pool of worker
groups (pool/: coordinator, group hosts, relay) and Ray Train's trainer for them (torch_trainer.py); what runs in
the trial's own process (trial_process.py, the only module here that trains, with torch); and protocol.py, what
both sides name."""
