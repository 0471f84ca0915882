# pytest puts this directory on sys.path, so the suites below it can `import whale_server`.
