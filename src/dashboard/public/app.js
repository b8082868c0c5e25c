// Dashboard front end: one EventSource, the whole state on every message, rendered with DOM
// calls (textContent only: event fields come from the broker and are never parsed as HTML).

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

function bytes(n) {
  if (n === null || n === undefined) return '–';
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${UNITS[u]}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${String(Math.round(s % 60)).padStart(2, '0')} s`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : '–';
}

function ago(iso, now) {
  if (!iso) return '–';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

/** Volume subject (`lvm~vg~lv`, percent-encoded) as the operator knows it. */
function volume(subject) {
  try {
    const parts = decodeURIComponent(subject).split('~');
    if (parts[0] === 'lvm' && parts.length === 3) return `${parts[1]}/${parts[2]}`;
    if (parts[0] === 'file' && parts.length === 3) return `${parts[1]}/${parts[2]}`;
    return decodeURIComponent(subject);
  } catch {
    return subject;
  }
}

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function pill(text, kind) {
  const td = document.createElement('td');
  const span = document.createElement('span');
  span.className = `pill pill-${kind}`;
  span.textContent = text;
  td.appendChild(span);
  return td;
}

function progressCell(percent) {
  const td = document.createElement('td');
  const bar = document.createElement('div');
  bar.className = 'bar';
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.setAttribute('aria-valuenow', String(percent));
  const fill = document.createElement('span');
  fill.style.width = `${percent}%`;
  const label = document.createElement('em');
  label.textContent = `${percent.toFixed(1)} %`;
  bar.append(fill, label);
  td.appendChild(bar);
  return td;
}

function fill(id, rows, columns, emptyText) {
  const body = document.getElementById(id);
  document.getElementById(`${id}-count`).textContent = String(rows.length);
  const trs = rows.map((row) => {
    const tr = document.createElement('tr');
    if (row.jobId) tr.dataset.jobId = row.jobId;
    if (row.hostId) tr.dataset.hostId = row.hostId;
    tr.append(...columns(row));
    return tr;
  });
  if (trs.length === 0) {
    const tr = document.createElement('tr');
    tr.className = 'empty';
    const td = cell(emptyText);
    td.colSpan = 12;
    tr.appendChild(td);
    trs.push(tr);
  }
  body.replaceChildren(...trs);
}

function render(state) {
  const now = Date.parse(state.generatedAt);
  const broker = document.getElementById('broker');
  broker.textContent = state.broker.connected
    ? 'broker connected'
    : `broker disconnected${state.broker.error ? `: ${state.broker.error}` : ''}`;
  broker.className = `pill ${state.broker.connected ? 'pill-ok' : 'pill-bad'}`;
  document.getElementById('updated').textContent =
    `${state.eventsSeen} events · updated ${clock(state.generatedAt)}`;

  fill(
    'hosts',
    state.hosts,
    (h) => [
      cell(h.hostId),
      pill(h.status, h.status === 'up' ? 'ok' : h.status === 'stopping' ? 'warn' : 'unknown'),
      cell(h.agentVersion ?? '–'),
      cell(h.lastPing ? `${clock(h.lastPing.at)} (${ago(h.lastPing.at, now)})` : 'never'),
      h.lastPing
        ? pill(
            h.lastPing.ok ? `ok ${duration(h.lastPing.durationMs)}` : h.lastPing.error,
            h.lastPing.ok ? 'ok' : 'bad',
          )
        : cell('–'),
      cell(ago(h.lastEventAt, now)),
    ],
    'no host seen yet',
  );

  fill(
    'jobs',
    state.jobs,
    (j) => [
      cell(j.hostId),
      cell(j.jobId),
      cell(j.commandType),
      cell(volume(j.subject)),
      cell(j.step === null ? 'accepted' : `${j.stepIndex + 1}/${j.stepCount} ${j.step}`),
      progressCell(j.percent),
      cell(j.bytesPerSecond === null ? '–' : `${bytes(j.bytesPerSecond)}/s`),
      cell(duration(j.etaMs)),
    ],
    'no job running',
  );

  fill(
    'results',
    state.results,
    (r) => [
      cell(clock(r.finishedAt)),
      cell(r.hostId),
      cell(r.commandType),
      cell(volume(r.subject)),
      cell(r.snapshotName ? `${r.snapshotName} (${r.snapshotKind ?? '?'})` : '–'),
      cell(bytes(r.physicalSize)),
      cell(duration(r.durationMs)),
      cell(r.strategy ?? '–'),
      cell(r.vmPauseMs === null ? '–' : duration(r.vmPauseMs)),
    ],
    'no finished job yet',
  );

  fill(
    'failures',
    state.failures,
    (f) => [
      cell(clock(f.at)),
      cell(f.hostId),
      cell(f.jobId),
      cell(f.commandType ?? '?'),
      pill(f.kind, f.kind === 'failed' ? 'bad' : 'warn'),
      cell(f.code),
      cell(f.message, 'msg'),
      cell(f.rolledBack === null ? '–' : f.rolledBack ? 'rolled back' : 'NOT rolled back'),
    ],
    'no failure',
  );
}

function connect() {
  const stream = document.getElementById('stream');
  const source = new EventSource('events');
  source.addEventListener('open', () => {
    stream.textContent = 'live';
    stream.className = 'pill pill-ok';
  });
  source.addEventListener('error', () => {
    stream.textContent = 'stream lost, retrying';
    stream.className = 'pill pill-bad';
  });
  source.addEventListener('state', (message) => render(JSON.parse(message.data)));
}

connect();
