//! Simulated Modbus devices (a metered, controllable load) served by tokio-modbus's servers
//! over TCP, RTU over TCP, or RTU over a pseudo-terminal with several units on the line.
//!
//! Register map of every simulated device (0-based protocol addresses):
//!
//! | table    | address | type        | meaning                                   |
//! |----------|---------|-------------|-------------------------------------------|
//! | holding  | 0-1     | f32         | active power, kW                          |
//! | holding  | 2-3     | f32         | voltage, V                                |
//! | holding  | 4-5     | u32         | forward energy, Wh                        |
//! | holding  | 6       | i16 ×0.1    | temperature, °C                           |
//! | holding  | 10      | u16 ×0.1    | setpoint, % of rated power (writable)     |
//! | holding  | 20-23   | f64         | forward energy, kWh                       |
//! | holding  | 24-25   | i32         | reactive power, var                       |
//! | holding  | 26-29   | u64         | forward energy, Wh                        |
//! | holding  | 30-33   | i64         | reverse energy, Wh (negative on purpose)  |
//! | holding  | 40-41   | f32 swapped | active power, kW, little word order       |
//! | input    | 0-5     |             | same as holding 0-5                       |
//! | coil     | 0       | bool        | load switch (writable)                    |
//! | discrete | 0       | bool        | load running                              |
//! | discrete | 1       | bool        | local "DR inhibit" key switch             |
//!
//! Any other address answers exception 02 (illegal data address).

use std::future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use super::{DataType, Order, encode_registers};
use crate::sim::SharedLoad;

/// Holding register of the setpoint (tenths of a percent).
pub const SETPOINT_REGISTER: u16 = 10;
/// Coil of the load switch.
pub const SWITCH_COIL: u16 = 0;

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// Unit id it answers to.
    pub unit: u8,
    /// The load it measures and controls.
    pub load: SharedLoad,
    silent: Arc<AtomicBool>,
    inhibit: Arc<AtomicBool>,
    /// Tenths of a percent the device never runs below, 0 for none.
    floor: Arc<AtomicU16>,
    /// Answers function 23 with exception 01, as the many devices that lack it do.
    no_read_write: Arc<AtomicBool>,
}

impl SimDevice {
    /// A device at `unit` on `load`.
    pub fn new(unit: u8, load: SharedLoad) -> Self {
        SimDevice {
            unit,
            load,
            silent: Arc::new(AtomicBool::new(false)),
            inhibit: Arc::new(AtomicBool::new(false)),
            floor: Arc::new(AtomicU16::new(0)),
            no_read_write: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Gives the device a local minimum setpoint, as an inverter's own limit: it takes a
    /// lower write but runs at the floor, so the value read back is not the one written.
    pub fn set_floor_pct(&self, pct: f64) {
        self.floor.store(
            (pct * 10.0).round().clamp(0.0, 1000.0) as u16,
            Ordering::SeqCst,
        );
    }

    /// Withdraws function 23 (Read/Write Multiple Registers), or gives it back.
    pub fn set_without_read_write(&self, without: bool) {
        self.no_read_write.store(without, Ordering::SeqCst);
    }

    fn set_setpoint(&self, raw: u16) -> Result<(), ExceptionCode> {
        if raw > 1000 {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let raw = raw.max(self.floor.load(Ordering::SeqCst));
        self.load.lock().setpoint_pct = f64::from(raw) / 10.0;
        Ok(())
    }

    /// Turns the local "DR inhibit" key switch (discrete input 1) on or off.
    pub fn set_inhibit(&self, on: bool) {
        self.inhibit.store(on, Ordering::SeqCst);
    }

    /// Makes the device stop answering (true) or answer again (false).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// Whether it is silent.
    pub fn is_silent(&self) -> bool {
        self.silent.load(Ordering::SeqCst)
    }

    fn holding(&self) -> Vec<Option<u16>> {
        let now = Instant::now();
        let l = self.load.lock();
        let p = l.power_kw(now);
        let mut regs: Vec<Option<u16>> = vec![None; 42];
        let mut put = |at: usize, v: f64, ty: DataType, wo: Order| {
            for (i, r) in encode_registers(v, ty, Order::Big, wo)
                .into_iter()
                .enumerate()
            {
                regs[at + i] = Some(r);
            }
        };
        put(0, p, DataType::F32, Order::Big);
        put(2, l.voltage(now), DataType::F32, Order::Big);
        put(
            4,
            (l.energy_kwh * 1000.0).floor(),
            DataType::U32,
            Order::Big,
        );
        put(6, 315.0, DataType::I16, Order::Big);
        put(
            SETPOINT_REGISTER as usize,
            l.setpoint_pct * 10.0,
            DataType::U16,
            Order::Big,
        );
        put(20, l.energy_kwh, DataType::F64, Order::Big);
        put(24, p * 200.0, DataType::I32, Order::Big);
        put(
            26,
            (l.energy_kwh * 1000.0).floor(),
            DataType::U64,
            Order::Big,
        );
        put(30, -12_345.0, DataType::I64, Order::Big);
        put(40, p, DataType::F32, Order::Little);
        regs
    }

    fn read_regs(&self, input: bool, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        let regs = self.holding();
        let limit = if input { 6 } else { regs.len() };
        let mut out = Vec::with_capacity(usize::from(count));
        for a in u32::from(start)..u32::from(start) + u32::from(count) {
            let a = a as usize;
            match regs.get(a).copied().flatten() {
                Some(v) if a < limit => out.push(v),
                _ => return Err(ExceptionCode::IllegalDataAddress),
            }
        }
        Ok(out)
    }

    fn handle(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        match req {
            Request::ReadHoldingRegisters(a, n) => self
                .read_regs(false, a, n)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => {
                self.read_regs(true, a, n).map(Response::ReadInputRegisters)
            }
            Request::ReadDiscreteInputs(1, 1) => Ok(Response::ReadDiscreteInputs(vec![
                self.inhibit.load(Ordering::SeqCst),
            ])),
            Request::ReadCoils(a, n) | Request::ReadDiscreteInputs(a, n) => {
                if a != 0 || n != 1 {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                let on = self.load.lock().on;
                Ok(match req {
                    Request::ReadCoils(..) => Response::ReadCoils(vec![on]),
                    _ => Response::ReadDiscreteInputs(vec![on]),
                })
            }
            Request::WriteSingleRegister(a, v) if a == SETPOINT_REGISTER => {
                self.set_setpoint(v)?;
                Ok(Response::WriteSingleRegister(a, v))
            }
            Request::WriteMultipleRegisters(a, ref v) if a == SETPOINT_REGISTER && v.len() == 1 => {
                self.set_setpoint(v[0])?;
                Ok(Response::WriteMultipleRegisters(a, 1))
            }
            Request::ReadWriteMultipleRegisters(ra, rn, wa, ref v)
                if wa == SETPOINT_REGISTER
                    && v.len() == 1
                    && !self.no_read_write.load(Ordering::SeqCst) =>
            {
                self.set_setpoint(v[0])?;
                self.read_regs(false, ra, rn)
                    .map(Response::ReadWriteMultipleRegisters)
            }
            Request::WriteSingleCoil(a, on) if a == SWITCH_COIL => {
                self.load.lock().on = on;
                Ok(Response::WriteSingleCoil(a, on))
            }
            Request::WriteSingleRegister(..)
            | Request::WriteMultipleRegisters(..)
            | Request::WriteSingleCoil(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// The devices on one simulated line, as a tokio-modbus service.
#[derive(Debug, Clone)]
pub struct SimBus {
    devices: Arc<Vec<SimDevice>>,
    /// Answer unknown unit ids with exception 0B, as a Modbus TCP gateway does; on a
    /// serial line an absent unit stays silent.
    gateway_exceptions: bool,
}

impl SimBus {
    /// A bus with `devices`.
    pub fn new(devices: Vec<SimDevice>) -> Self {
        SimBus {
            devices: Arc::new(devices),
            gateway_exceptions: false,
        }
    }
}

impl Service for SimBus {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Some(dev) = self.devices.iter().find(|d| d.unit == req.slave) else {
            return future::ready(if self.gateway_exceptions {
                Err(ExceptionCode::GatewayTargetDevice)
            } else {
                Ok(None)
            });
        };
        if dev.silent.load(Ordering::SeqCst) {
            return future::ready(Ok(None));
        }
        future::ready(dev.handle(req.request).map(Some))
    }
}

/// Serves `bus` as Modbus TCP on `listener` until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, mut bus: SimBus) -> io::Result<()> {
    bus.gateway_exceptions = true;
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = move |stream, addr: SocketAddr| {
        let bus = bus.clone();
        async move {
            tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, move |_| {
                Ok(Some(bus.clone()))
            })
        }
    };
    server
        .serve(&on_connected, |e| {
            tracing::debug!("modbus sim connection ended: {e}")
        })
        .await
}

/// Serves `bus` as Modbus RTU over TCP on `listener`.
pub async fn serve_rtu_over_tcp(listener: TcpListener, bus: SimBus) -> io::Result<()> {
    let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
    let on_connected = move |stream, addr: SocketAddr| {
        let bus = bus.clone();
        async move {
            tokio_modbus::server::rtu_over_tcp::accept_tcp_connection(stream, addr, move |_| {
                Ok(Some(bus.clone()))
            })
        }
    };
    server
        .serve(&on_connected, |e| {
            tracing::debug!("modbus sim connection ended: {e}")
        })
        .await
}

/// Serves `bus` as Modbus RTU on a serial stream (the master side of a pty).
pub async fn serve_rtu(serial: tokio_serial::SerialStream, bus: SimBus) -> io::Result<()> {
    tokio_modbus::server::rtu::Server::new(serial)
        .serve_forever(bus)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Link;
    use crate::modbus::{ModbusError, ModbusLine, ReadData, Table, decode_registers};
    use crate::sim::LoadModel;
    use std::time::Duration;

    #[tokio::test]
    async fn tcp_reads_writes_and_exceptions() {
        let load = SharedLoad::new(LoadModel::new(50.0, 100.0, 0.0));
        let dev = SimDevice::new(1, load.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve_tcp(listener, SimBus::new(vec![dev.clone()])));
        let link = Link::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let mut line = ModbusLine::new(link, Duration::from_millis(300));
        let ReadData::Words(w) = line.read(1, Table::HoldingRegister, 0, 2).await.unwrap() else {
            panic!()
        };
        let p = decode_registers(&w, DataType::F32, Order::Big, Order::Big);
        assert!((45.0..55.0).contains(&p), "{p}");
        line.write_registers(1, SETPOINT_REGISTER, &[500])
            .await
            .unwrap();
        let ReadData::Words(w) = line.read(1, Table::HoldingRegister, 0, 2).await.unwrap() else {
            panic!()
        };
        let p = decode_registers(&w, DataType::F32, Order::Big, Order::Big);
        assert!((22.0..28.0).contains(&p), "{p}");
        assert!(matches!(
            line.read(1, Table::HoldingRegister, 100, 1).await,
            Err(ModbusError::Exception { code: 2 })
        ));
        assert!(matches!(
            line.read(9, Table::HoldingRegister, 0, 1).await,
            Err(ModbusError::Exception { code: 0x0B })
        ));
        // Function 23: written, then read back in the same reply; the floor shows in it.
        assert_eq!(
            line.write_read_registers(1, SETPOINT_REGISTER, &[300])
                .await
                .unwrap(),
            vec![300]
        );
        dev.set_floor_pct(40.0);
        assert_eq!(
            line.write_read_registers(1, SETPOINT_REGISTER, &[300])
                .await
                .unwrap(),
            vec![400]
        );
        dev.set_without_read_write(true);
        assert!(matches!(
            line.write_read_registers(1, SETPOINT_REGISTER, &[600])
                .await,
            Err(ModbusError::Exception { code: 1 })
        ));
        assert_eq!(
            load.lock().setpoint_pct,
            40.0,
            "a refused call writes nothing"
        );
        dev.set_silent(true);
        assert!(matches!(
            line.read(1, Table::HoldingRegister, 0, 1).await,
            Err(ModbusError::Timeout(_))
        ));
        dev.set_silent(false);
        line.write_coil(1, SWITCH_COIL, false).await.unwrap();
        assert_eq!(
            line.read(1, Table::Coil, 0, 1).await.unwrap(),
            ReadData::Bits(vec![false])
        );
    }

    #[tokio::test]
    async fn rtu_over_a_pty_with_two_units() {
        let pty = crate::sim::Pty::open(None).unwrap();
        let path = pty.path().to_path_buf();
        let crate::sim::Pty { master, hold } = pty;
        let devs = vec![
            SimDevice::new(1, SharedLoad::new(LoadModel::new(10.0, 0.0, 0.0))),
            SimDevice::new(2, SharedLoad::new(LoadModel::new(20.0, 0.0, 0.0))),
        ];
        tokio::spawn(serve_rtu(master, SimBus::new(devs)));
        let link = Link::parse(&format!("rtu-serial://{}?baud=9600", path.display())).unwrap();
        let mut line = ModbusLine::new(link, Duration::from_millis(500));
        for unit in [1u8, 2] {
            let ReadData::Words(w) = line.read(unit, Table::HoldingRegister, 0, 2).await.unwrap()
            else {
                panic!()
            };
            let p = decode_registers(&w, DataType::F32, Order::Big, Order::Big);
            assert!((p - 10.0 * f64::from(unit)).abs() < 1.0, "{p}");
        }
        // Unit 3 is not on the line: silence, then a clean reconnect for unit 1.
        assert!(matches!(
            line.read(3, Table::HoldingRegister, 0, 1).await,
            Err(ModbusError::Timeout(_))
        ));
        assert!(line.read(1, Table::HoldingRegister, 0, 1).await.is_ok());
        drop(hold);
    }
}
