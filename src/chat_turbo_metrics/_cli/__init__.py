"""The ``chat-turbo-metrics`` subcommands: config, doctor, rules, demo, report (dispatched by ``__main__``)."""
