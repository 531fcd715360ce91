#!/usr/bin/env node
// The `deputy` command: runs src/main.ts through tsx in this process.
import { register } from 'tsx/esm/api';

register();
await import('../src/main.ts');
