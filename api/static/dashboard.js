// Lifeline operator dashboard: live snapshots over server-sent events (GET /api/events), SLA from GET /api/sla,
// approve/reject through POST /api/remediations/{case_id}/approve|reject. Vanilla JS, no build step.
(() => {
  'use strict';

  const cfg = JSON.parse(document.getElementById('lifeline-config').textContent);
  const $ = (id) => document.getElementById(id);
  const SLA_EVERY_MS = 15000;
  const decisions = new Map(); // case_id -> {text, error, stage}: what this page did, until the stage moves on

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c !== undefined && c !== null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmtInt = (n) => (n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US'));
  const fmtRate = (n) => (n ? Number(n).toFixed(n < 10 ? 1 : 0) : '0');
  function fmtSeconds(s) {
    if (s === undefined || s === null || !isFinite(s) || s <= 0) return '—';
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${Math.round(s / 86400)} d`;
  }
  function fmtMs(ms) {
    if (!ms) return '—';
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }
  function ago(iso) {
    if (!iso) return '—';
    const t = Date.parse(iso);
    return isNaN(t) ? String(iso) : `${fmtSeconds((Date.now() - t) / 1000)} ago`;
  }
  const link = (href, text) => (href ? el('a', { href, target: '_blank', rel: 'noopener', text }) : text);

  function fill(tbodyId, rows, makeRow) {
    const body = $(tbodyId);
    body.replaceChildren(...rows.map(makeRow));
    const empty = $(`${tbodyId}-empty`);
    if (empty) empty.hidden = rows.length > 0;
  }

  function setCard(id, value, sub, alert) {
    const node = $(id);
    const text = String(value);
    const card = node.closest('.card');
    if (node.textContent !== text && node.textContent !== '–') {
      card.classList.remove('flash');
      void card.offsetWidth; // restart the animation
      card.classList.add('flash');
    }
    node.textContent = text;
    if (sub) $(sub[0]).textContent = sub[1];
    card.classList.toggle('alert', Boolean(alert));
  }

  // -- live snapshot ---------------------------------------------------------------------------------------------

  function render(s) {
    const t = s.totals;
    setCard('t-received', fmtInt(t.received), ['t-rejected', `${fmtInt(t.rejected)} rejected`], false);
    setCard('t-delivered', fmtInt(t.delivered), ['t-failed', `${fmtInt(t.failed_attempts)} failed ${t.failed_attempts === 1 ? 'attempt' : 'attempts'}`],
      t.failed_attempts > 0 && t.delivered === 0);
    setCard('t-backlog', fmtInt(t.backlog), ['t-oldest', `oldest ${fmtSeconds(t.oldest_pending_age_s)}`], false);
    setCard('t-blocked', fmtInt(t.blocked_lanes), null, t.blocked_lanes > 0);
    setCard('t-dead', fmtInt(t.dead_letters_open), null, t.dead_letters_open > 0);
    setCard('t-cases', fmtInt(t.cases_open), ['t-awaiting', `${fmtInt(t.cases_awaiting_approval)} awaiting approval`],
      t.cases_awaiting_approval > 0);

    fill('channels', s.channels, (c) => el('tr', { 'data-channel': c.channel },
      el('td', { text: c.channel }),
      el('td', { class: 'num', text: fmtInt(c.received) }),
      el('td', { class: `num ${c.rejected ? 'warn' : ''}`, text: fmtInt(c.rejected) }),
      el('td', { class: 'num', text: fmtRate(c.rate && c.rate.per_minute) }),
      el('td', { class: 'num', text: fmtInt(c.outbox_depth) }),
      el('td', { class: 'num', 'data-config-version': c.config_version == null ? '' : String(c.config_version) },
        c.config_version == null ? 'file' : `v${c.config_version}`,
        c.routed_with != null && c.routed_with !== c.config_version
          ? el('span', { class: 'muted', text: ` (routing v${c.routed_with})` }) : '')));

    const files = s.files || { sources: [], destinations: [] };
    fill('file-sources', files.sources, (f) => el('tr', { 'data-file-source': f.channel },
      el('td', { text: f.channel }),
      el('td', { text: `${f.kind} ${f.location}` }),
      el('td', { class: f.state === 'failing' ? 'bad' : '', text: f.state === 'failing'
        ? `failing (${f.last_error_class || 'error'} ×${f.consecutive_failures})` : f.state }),
      el('td', { class: 'num', text: fmtInt(f.files_total) }),
      el('td', { class: `num ${f.error_files ? 'warn' : ''}`, text: fmtInt(f.error_files) }),
      el('td', { text: f.last_file_at ? new Date(f.last_file_at).toLocaleString() : '—' })));
    fill('file-dests', files.destinations, (d) => el('tr', { 'data-file-dest': d.destination },
      el('td', { text: d.destination }),
      el('td', { text: `${d.kind} ${d.location}` }),
      el('td', { class: 'num', text: d.batched ? fmtInt(d.open_batch_messages) : '—' })));

    fill('flows', s.flows, (f) => {
      const p95 = f.latency && f.latency.end_to_end ? f.latency.end_to_end.p95_ms : null;
      const backlog = f.backlog || {};
      return el('tr', { 'data-flow': `${f.channel}>${f.destination}` },
        el('td', {}, f.channel, el('span', { class: 'muted', text: ' → ' }), f.destination,
          f.breaker && f.breaker !== 'closed'
            ? el('span', { class: 'bad', 'data-breaker': f.breaker, text: ` (breaker ${f.breaker.replace('_', '-')})` })
            : ''),
        el('td', { class: 'num', text: fmtRate(f.rate && f.rate.per_minute) }),
        el('td', { class: 'num good', text: fmtInt(f.attempts_succeeded) }),
        el('td', { class: `num ${f.attempts_failed ? 'bad' : ''}`, text: fmtInt(f.attempts_failed) }),
        el('td', { class: `num ${f.attempts_rejected ? 'warn' : ''}`, text: fmtInt(f.attempts_rejected) }),
        el('td', { class: 'num', text: f.success_rate === null || f.success_rate === undefined
          ? '—' : `${(f.success_rate * 100).toFixed(1)}%` }),
        el('td', { class: 'num', text: fmtMs(p95) }),
        el('td', { class: 'num', text: fmtInt(backlog.depth) }),
        el('td', { class: 'num', text: fmtSeconds(backlog.oldest_age_s) }),
        el('td', { class: `num ${f.dead_lettered ? 'bad' : ''}`, text: fmtInt(f.dead_lettered) }),
        el('td', { class: `num ${f.lanes_blocked ? 'bad' : ''}`, text: fmtInt(f.lanes_blocked) }));
    });

    fill('lanes', s.blocked_lanes, (l) => el('tr', {},
      el('td', { text: l.destination }),
      el('td', { text: l.lane === '' ? '(whole destination)' : l.lane }),
      el('td', {}, link(l.workflow_url, l.head_message_id)),
      el('td', { class: 'num', text: fmtInt(l.waiting) }),
      el('td', { class: 'nowrap', text: ago(l.blocked_since) })));

    fill('dead', s.dead_letters, (d) => el('tr', {},
      el('td', {}, link(d.workflow_url, String(d.id))),
      el('td', { text: d.destination }),
      el('td', { class: 'nowrap', text: d.message_type || '—' }),
      el('td', { text: d.reason, title: `${d.error_type}: ${d.reason}` }),
      el('td', { class: 'nowrap', text: ago(d.created_at) })));

    renderCases(s.cases);
    $('updated').textContent = `updated ${new Date(s.observed_at).toLocaleTimeString()}`;
  }

  // Case rows are updated in place so a note being typed survives the next snapshot.
  function renderCases(cases) {
    const body = $('cases');
    const seen = new Set();
    for (const c of cases) {
      seen.add(c.case_id);
      let row = body.querySelector(`tr[data-case-id="${CSS.escape(c.case_id)}"]`);
      if (!row) {
        row = caseRow(c);
        body.append(row);
      }
      updateCaseRow(row, c);
    }
    for (const row of [...body.children]) {
      if (!seen.has(row.dataset.caseId)) row.remove();
    }
    $('cases-empty').hidden = cases.length > 0;
  }

  function caseRow(c) {
    const note = el('input', { class: 'note', type: 'text', placeholder: 'note (optional)', maxlength: 500,
      'aria-label': `note for ${c.case_id}` });
    const approve = el('button', { class: 'approve', type: 'button', text: 'Approve' });
    const reject = el('button', { class: 'reject', type: 'button', text: 'Reject' });
    const row = el('tr', { 'data-case-id': c.case_id },
      el('td', { class: 'case' }), el('td', { class: 'stage' }), el('td', { class: 'action' }),
      el('td', { class: 'diagnosis' }), el('td', { class: 'opened' }),
      el('td', { class: 'decide' }, el('div', { class: 'decide-box' }, note, approve, reject),
        el('div', { class: 'decision-msg' })));
    approve.addEventListener('click', () => decide(row, 'approve'));
    reject.addEventListener('click', () => decide(row, 'reject'));
    if (!cfg.can_approve) row.querySelector('.decide-box').hidden = true;
    return row;
  }

  function updateCaseRow(row, c) {
    row.caseData = c;
    row.dataset.stage = c.stage;
    row.querySelector('.case').replaceChildren(link(c.workflow_url, c.case_id),
      el('div', { class: 'muted', text: `${c.kind} · ${c.mode}` }));
    row.querySelector('.stage').replaceChildren(el('span', { class: `pill ${c.stage}`, text: c.stage.replace(/_/g, ' ') }));
    row.querySelector('.action').replaceChildren(...(c.action
      ? [c.action, ' ', el('span', { class: `pill ${c.safety}`, text: c.safety || '?' })] : ['—']));
    row.querySelector('.diagnosis').textContent = c.root_cause || c.signature || '—';
    row.querySelector('.opened').textContent = ago(c.opened_at);
    row.querySelector('.opened').classList.add('nowrap');
    const mine = decisions.get(c.case_id);
    if (mine && mine.stage !== c.stage && !mine.error) decisions.delete(c.case_id);
    const msg = row.querySelector('.decision-msg');
    const pending = row.dataset.sending === '1';
    const can = cfg.can_approve && c.awaiting_approval && !pending && !(mine && !mine.error);
    for (const b of row.querySelectorAll('button')) b.disabled = !can;
    if (mine) {
      msg.textContent = mine.text;
      msg.classList.toggle('error', Boolean(mine.error));
    } else if (!pending) {
      msg.textContent = c.awaiting_approval ? '' : `${c.stage.replace(/_/g, ' ')}: nothing to decide`;
      msg.classList.remove('error');
    }
  }

  async function decide(row, verb) {
    const c = row.caseData;
    const note = row.querySelector('input.note').value.trim();
    row.dataset.sending = '1';
    decisions.delete(c.case_id);
    updateCaseRow(row, c);
    row.querySelector('.decision-msg').textContent = `${verb === 'approve' ? 'approving' : 'rejecting'}…`;
    let outcome;
    try {
      const r = await fetch(`/api/remediations/${encodeURIComponent(c.case_id)}/${verb}`, {
        method: 'POST', credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ note, action: c.action || '' }),
      });
      const problem = r.ok ? null : await r.json().catch(() => ({}));
      if (r.ok) outcome = { text: `${verb === 'approve' ? 'approved' : 'rejected'} by you`, stage: c.stage };
      else if (r.status === 404 && !(problem && problem.field)) outcome = { text: 'remediation API unavailable', error: true };
      else outcome = { text: `${r.status}: ${(problem && problem.detail) || r.statusText}`, error: true };
    } catch (err) {
      outcome = { text: `not sent: ${err.message}`, error: true };
    }
    decisions.set(c.case_id, outcome);
    delete row.dataset.sending;
    updateCaseRow(row, c);
  }

  // -- SLA (its own endpoint; the panel says so while it is not there) ---------------------------------------------

  function renderValue(v) {
    if (v === null || v === undefined) return '—';
    if (typeof v === 'number') return Number.isInteger(v) ? fmtInt(v) : v.toFixed(3).replace(/\.?0+$/, '');
    if (typeof v === 'boolean') return el('span', { class: v ? 'good' : 'bad', text: v ? 'met' : 'breached' });
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function withUnit(v, unit) {
    if (v === null || v === undefined) return '—';
    if (unit === 'ratio') return `${(v * 100).toFixed(v >= 0.999 && v < 1 ? 2 : 1)}%`;
    if (unit === 'seconds') return fmtSeconds(v) === '—' ? '0 s' : (v < 1 ? `${Math.round(v * 1000)} ms` : fmtSeconds(v));
    return `${renderValue(v)} ${unit || ''}`;
  }

  // GET /api/sla: {ok, items: [{name, subject, in_maintenance, ok, objectives: [{objective, value, target, unit, ok,
  // violation}]}]}; anything else is shown as plain keys and values.
  function renderSla(data) {
    const box = $('sla');
    if (data && Array.isArray(data.items)) {
      if (!data.items.length) {
        box.replaceChildren(el('p', { class: 'empty', text: 'No SLA configured (lifeline.yaml sla:).' }));
        return;
      }
      const rows = [];
      for (const s of data.items) {
        const objectives = s.objectives || [];
        objectives.forEach((o, i) => rows.push(el('tr', { 'data-sla': s.name },
          i === 0 ? el('td', { rowspan: objectives.length }, el('strong', { text: s.name }),
            el('div', { class: 'muted', text: s.subject || '' })) : null,
          el('td', { text: o.objective.replace(/_/g, ' ') }),
          el('td', { class: 'num', text: withUnit(o.value, o.unit) }),
          el('td', { class: 'num muted', text: withUnit(o.target, o.unit) }),
          el('td', {}, s.in_maintenance ? el('span', { class: 'pill', text: 'maintenance' })
            : el('span', { class: o.ok ? 'good' : 'bad', text: o.ok ? 'met' : 'violated' })))));
      }
      box.replaceChildren(el('p', { class: data.ok ? 'good' : 'bad', text: data.ok ? 'All SLAs met.' : 'SLA violated.' }),
        el('table', {}, el('thead', {}, el('tr', {}, el('th', { text: 'SLA' }), el('th', { text: 'Objective' }),
          el('th', { class: 'num', text: 'Now' }), el('th', { class: 'num', text: 'Target' }), el('th', { text: 'Status' }))),
        el('tbody', {}, ...rows)));
      return;
    }
    const kv = el('dl', { class: 'kv' });
    for (const [k, v] of Object.entries(data || {})) {
      kv.append(el('dt', { text: k.replace(/_/g, ' ') }), el('dd', {}, renderValue(v)));
    }
    box.replaceChildren(kv.children.length ? kv : el('p', { class: 'empty', text: 'No SLA figures yet.' }));
  }

  async function loadSla() {
    try {
      const r = await fetch('/api/sla', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
      if (r.status === 404) {
        $('sla').replaceChildren(el('p', { class: 'unavailable', text: 'SLA unavailable (GET /api/sla answers 404)' }));
      } else if (!r.ok) {
        $('sla').replaceChildren(el('p', { class: 'unavailable', text: `SLA unavailable (${r.status})` }));
      } else {
        renderSla(await r.json());
      }
    } catch (err) {
      $('sla').replaceChildren(el('p', { class: 'unavailable', text: `SLA unavailable: ${err.message}` }));
    }
  }

  // -- connection ------------------------------------------------------------------------------------------------

  function setConn(state, text) {
    $('conn').dataset.state = state;
    $('conn-text').textContent = text;
  }

  let source = null;
  function connect() {
    source = new EventSource(cfg.events_url);
    source.addEventListener('open', () => setConn('live', `live · every ${cfg.interval_s} s`));
    source.addEventListener('snapshot', (e) => {
      setConn('live', `live · every ${cfg.interval_s} s`);
      render(JSON.parse(e.data));
    });
    source.addEventListener('problem', (e) => setConn('error', JSON.parse(e.data).detail));
    source.addEventListener('error', async () => {
      if (source.readyState !== EventSource.CLOSED) {
        setConn('error', 'reconnecting…');
        return;
      }
      // The stream was refused (not a network blip): an expired session sends the browser back to log in.
      const probe = await fetch('/dashboard/static/dashboard.css', { credentials: 'same-origin' }).catch(() => null);
      if (probe && probe.status === 401) {
        setConn('error', 'session expired');
        window.location.assign('/dashboard');
        return;
      }
      setConn('error', 'disconnected · retrying');
      setTimeout(connect, 5000);
    });
  }

  // -- start -----------------------------------------------------------------------------------------------------

  const ui = $('temporal-link');
  ui.href = `${cfg.temporal_ui_url}/namespaces/${encodeURIComponent(cfg.namespace)}/workflows`;
  $('who').textContent = `${cfg.user} (${cfg.roles.join(', ')})`;
  $('cases-hint').textContent = cfg.can_approve
    ? 'Approve or reject the pending action of a case awaiting approval; each case links to its workflow.'
    : 'Approving needs role oncall or admin; each case links to its workflow.';
  $('logout').addEventListener('click', async () => {
    await fetch('/dashboard/session', { method: 'DELETE', credentials: 'same-origin' }).catch(() => null);
    window.location.assign('/dashboard');
  });
  connect();
  loadSla();
  setInterval(loadSla, SLA_EVERY_MS);
  window.addEventListener('lifeline:sla', loadSla);
})();
