//! `mlxfs top`: a live view of the mount, refreshed every second: throughput now and over 10 s
//! and 60 s, bytes per view and per model, store savings, operation counts and latencies.
//! Quits on `q`, Esc or Ctrl-C and restores the terminal (also on a panic).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use daemon::report::{StatusReport, VIEWS};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use super::status::{collect, rate};
use super::EXIT_OK;
use crate::human;

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub interval: f64,
}

pub fn run(store_dir: &Path, args: &TopArgs) -> Result<i32> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("`mlxfs top` needs a terminal; from a script use `mlxfs status --json`");
    }
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, store_dir, interval);
    ratatui::restore();
    result.map(|()| EXIT_OK)
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    store_dir: &Path,
    interval: Duration,
) -> Result<()> {
    loop {
        let fetched = collect(store_dir).map_err(|e| format!("{e:#}"));
        terminal.draw(|f| draw(f, &fetched))?;
        let next = Instant::now() + interval;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                        && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C'));
                    if ctrl_c
                        || matches!(
                            key.code,
                            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc
                        )
                    {
                        return Ok(());
                    }
                }
                Event::Resize(..) => terminal.draw(|f| draw(f, &fetched)).map(|_| ())?,
                _ => {}
            }
        }
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn uptime(secs: f64) -> String {
    let s = secs as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn draw(f: &mut Frame, fetched: &Result<(StatusReport, Option<String>), String>) {
    let area = f.area();
    let (status, note) = match fetched {
        Ok(v) => v,
        Err(e) => {
            f.render_widget(
                Paragraph::new(format!("mlxfs top: {e}\n\nq to quit"))
                    .block(Block::bordered().title(" mlxfs top ")),
                area,
            );
            return;
        }
    };
    let live = note.is_none();
    let header = match (&status.mountpoint, status.pid) {
        (Some(mp), Some(pid)) if live => format!(
            "mounted at {mp}  pid {pid}  up {}  store {}",
            uptime(status.uptime_secs),
            status.store
        ),
        _ => format!(
            "{}  store {}",
            note.as_deref().unwrap_or("not mounted"),
            status.store
        ),
    };
    let op_rows: Vec<Row> = status
        .ops
        .iter()
        .filter(|(_, o)| o.count > 0)
        .map(|(name, o)| {
            Row::new(vec![
                name.clone(),
                human::count(o.count),
                human::count(o.errors),
                format!("{:.0}", o.mean_us),
            ])
        })
        .collect();
    let model_rows: Vec<Row> = status
        .per_model
        .iter()
        .map(|m| {
            Row::new(vec![
                format!("{} {}", m.layout, m.name),
                human::bytes(m.logical_bytes),
                human::bytes(m.read_bytes),
                rate(m.read_bytes_per_sec),
                human::bytes(m.written_bytes),
            ])
        })
        .collect();

    let [top, throughput, middle, models, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Length(VIEWS.len() as u16 + 3),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(Line::styled(format!(" mlxfs top — {header}"), bold())),
        top,
    );

    let t = &status.throughput;
    let rows = vec![
        Row::new(vec![
            "read".to_string(),
            human::bytes(status.read_bytes),
            rate(status.read_bytes_per_sec),
            rate(t.s10.read_bytes_per_sec),
            rate(t.s60.read_bytes_per_sec),
        ]),
        Row::new(vec![
            "written".to_string(),
            human::bytes(status.written_bytes),
            rate(status.write_bytes_per_sec),
            rate(t.s10.write_bytes_per_sec),
            rate(t.s60.write_bytes_per_sec),
        ]),
    ];
    let widths = [
        Constraint::Length(8),
        Constraint::Length(12),
        Constraint::Length(13),
        Constraint::Length(13),
        Constraint::Length(13),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(vec!["", "total", "now (1 s)", "10 s", "60 s"]).style(bold()))
            .block(Block::bordered().title(" throughput ")),
        throughput,
    );

    let [views, store_area] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(middle);
    let view_rows: Vec<Row> = VIEWS
        .iter()
        .map(|v| {
            let u = status.per_view.get(*v).cloned().unwrap_or_default();
            Row::new(vec![
                v.to_string(),
                human::bytes(u.read_bytes),
                rate(u.read_bytes_per_sec),
                human::bytes(u.written_bytes),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            view_rows,
            [
                Constraint::Length(9),
                Constraint::Length(11),
                Constraint::Length(13),
                Constraint::Length(11),
            ],
        )
        .header(Row::new(vec!["view", "read", "read now", "written"]).style(bold()))
        .block(Block::bordered().title(" per view ")),
        views,
    );
    let store_lines = vec![
        Line::from(format!(
            "logical  {:>11}  {} files",
            human::bytes(status.logical_bytes),
            human::count(status.files)
        )),
        Line::from(format!(
            "physical {:>11}  {} chunks",
            human::bytes(status.physical_bytes),
            human::count(status.chunks)
        )),
        Line::from(format!(
            "saved    {:>11}  {:.1}%",
            human::bytes(status.saved_bytes),
            status.saved_percent
        )),
        Line::from(format!(
            "models   {:>11}  hf {}, ollama {}",
            status.models, status.models_by_layout.hf, status.models_by_layout.ollama
        )),
    ];
    f.render_widget(
        Paragraph::new(store_lines).block(Block::bordered().title(" store ")),
        store_area,
    );

    let [models_area, ops_area] =
        Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)]).areas(models);
    f.render_widget(
        Table::new(
            model_rows,
            [
                Constraint::Min(20),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(10),
            ],
        )
        .header(Row::new(vec!["model", "size", "read", "read now", "written"]).style(bold()))
        .block(Block::bordered().title(" models (most read first) ")),
        models_area,
    );
    f.render_widget(
        Table::new(
            op_rows,
            [
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(7),
                Constraint::Length(8),
            ],
        )
        .header(Row::new(vec!["op", "count", "errors", "mean µs"]).style(bold()))
        .block(Block::bordered().title(" operations ")),
        ops_area,
    );
    f.render_widget(
        Paragraph::new(" q, Esc or Ctrl-C: quit")
            .style(Style::default().add_modifier(Modifier::DIM)),
        help,
    );
}
